"""Training: ``python -m pix2tex.train --config FILE [--resume] [--no_cuda] [--set KEY=VALUE …]``.

The loop is explicit: for each batch, :func:`train_step` accumulates gradients over micro-batches,
clips, steps the optimizer and the scheduler and zeroes the gradients.  Every ``sample_freq``
steps the model decodes ``valbatches`` validation batches greedily and is scored (BLEU, edit
distance, token accuracy); :class:`CheckpointWriter` writes the best model by BLEU and the last
one as model folders, and the resume state (``last.pt``) with them.

``--resume`` restores model, optimizer, scheduler, RNG states and the position in the epoch, so
the run continues with the same learning rate and the same batches as if it had never stopped
(the batch order and each sample's augmentation depend only on seed, epoch and batch index).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm
from x_transformers.x_transformers import Attention, FeedForward

from pix2tex.checkpoint import (
    CheckpointError,
    load_model_folder,
    load_resume_state,
    read_folder_files,
    save_model_folder,
    save_resume_state,
)
from pix2tex.config import Config, ConfigError, TrainConfig, load_config, save_config
from pix2tex.dataset.dataset import BatchDataset, DatasetError, Im2LatexDataset, collate_batch
from pix2tex.distributed import Dist, DistributedError, init_from_env
from pix2tex.eval import read_dataset
from pix2tex.metrics import Scores, score
from pix2tex.models.model import Model, get_model, model_summary
from pix2tex.tokenizer import PAD_ID, LatexTokenizer, TokenizerError

__all__ = ["train", "validate", "main", "TrainResult", "override_args"]


@dataclass
class TrainResult:
    step: int
    epoch: int
    best_bleu: float
    last_loss: float
    run_dir: Path
    is_main: bool = True  # rank 0 (or the only process): the one that reports


class _Stop(Exception):
    """Raised by the loop, between steps, once a stop was asked for (SIGTERM, Ctrl+C)."""


def _device(no_cuda: bool) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not no_cuda else "cpu")


def load_datasets(config: Config) -> tuple[Im2LatexDataset, Im2LatexDataset | None, LatexTokenizer]:
    t, m = config.train, config.model
    if t.data is None or t.tokenizer is None:
        raise ConfigError("the config needs 'data' (train .pkl) and 'tokenizer' to train")
    tokenizer = LatexTokenizer.load(t.tokenizer)
    if tokenizer.vocab_size > m.num_tokens:
        raise ConfigError(f"num_tokens ({m.num_tokens}) is smaller than the tokenizer's vocabulary "
                          f"({tokenizer.vocab_size}, {t.tokenizer})")
    common = dict(max_seq_len=m.max_seq_len, max_dimensions=(m.max_width, m.max_height),
                  min_dimensions=(t.min_width, t.min_height), patch_size=m.patch_size, glyph_scale=t.glyph_scale)
    train_set = Im2LatexDataset.load(t.data)
    train_set.set_tokenizer(tokenizer)
    train_set.update(batchsize=t.batchsize, shuffle=True, test=not t.augment, seed=t.seed,
                     keep_smaller_batches=False, corpus_weights=t.corpus_weights,
                     max_label_tokens=t.max_label_tokens, augment_level=t.augment_level,
                     length_pool=t.length_pool, **common)
    corpora = train_set.corpus_sizes() if t.corpus_weights else {}
    for name in t.corpus_weights:
        if name not in corpora:
            raise ConfigError(f"corpus_weights: no training image belongs to corpus '{name}' "
                              f"({t.data} has: {', '.join(sorted(corpora)) or 'none'})")
    val_set = None
    if t.valdata is not None:
        val_set = Im2LatexDataset.load(t.valdata)
        val_set.set_tokenizer(tokenizer)
        val_set.update(batchsize=t.testbatchsize, shuffle=False, test=True, seed=t.seed,
                       keep_smaller_batches=True, **common)
        if val_set.glyph_estimator != train_set.glyph_estimator:
            raise ConfigError(f"{t.valdata} measures glyphs with {val_set.glyph_estimator!r}, {t.data} with "
                              f"{train_set.glyph_estimator!r}: validation would read at other sizes than training "
                              f"(python -m pix2tex.dataset.dataset --remeasure)")
    if not train_set.batches(0):
        raise DatasetError(f"{t.data}: no training batch fits the size and length limits "
                           f"({len(train_set)} samples, batchsize {t.batchsize})")
    return train_set, val_set, tokenizer


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups: weight decay on weight matrices and convolution kernels only.

    Biases, normalization gains and shifts (1-D), embedding tables, the class token and the
    position tables get none: decaying them pulls scales and positions towards zero rather than
    regularizing a mapping.
    """
    tables = {id(mod.weight) for mod in model.modules() if isinstance(mod, torch.nn.Embedding)}
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.dim() < 2 or id(param) in tables or name.endswith(("cls_token", "pos_embed"))
        (keep if no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config: Config, *, one_group: bool = False) -> torch.optim.Optimizer:
    """Adam/AdamW over :func:`decay_groups`; ``one_group``: every parameter decayed, as runs saved
    before the groups existed were trained (their resume states hold one group)."""
    t = config.train
    cls = torch.optim.AdamW if t.optimizer == "AdamW" else torch.optim.Adam
    params = model.parameters() if one_group else decay_groups(model, t.weight_decay)
    return cls(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to ``max_lr``, then a cosine down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config, total_steps: int):
    t = config.train
    if t.scheduler == "WarmupCosine":
        # LambdaLR multiplies the optimizer's initial lr; set it to max_lr so the factor is the schedule.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = t.max_lr
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, t.warmup_steps, total_steps, t.max_lr, t.min_lr) / t.max_lr)
    if t.scheduler == "OneCycleLR":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.max_lr, total_steps=max(total_steps, 2),
                                                   pct_start=t.pct_start, anneal_strategy="cos")
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.lr_step, gamma=t.gamma)


def validate(model: Model, dataset: Im2LatexDataset, tokenizer: LatexTokenizer, max_batches: int,
             device: torch.device) -> tuple[Scores, list[tuple[str, str]]]:
    """Greedy-decode up to ``max_batches`` batches; return scores and (prediction, reference) pairs."""
    was_training = model.training
    model.eval()
    fused = model.encoder.fused_attention
    model.encoder.use_fused_attention(True)  # decoding runs in fp32, where the fused kernel is the faster
    predictions: list[str] = []
    references: list[str] = []
    for _, preds, refs in read_dataset(model, tokenizer, dataset, dataset.batches(0)[:max_batches], device,
                                       bound_by_labels=True):
        predictions += preds
        references += refs
    model.encoder.use_fused_attention(fused)
    model.train(was_training)
    return score(predictions, references), list(zip(predictions, references, strict=True))


def _weights_from(path: str) -> dict[str, torch.Tensor]:
    """Model weights of a model folder or a resume state (``load_chkpt``: weights only)."""
    if Path(path).is_dir():
        return load_model_folder(path)[0].state_dict()
    return load_resume_state(path)["model"]


# The learned position tables: the encoder's (one code per patch of the largest canvas) and the
# decoder's (one per token of max_seq_len).
POSITION_TABLES = ("encoder.vit.patch_embed.pos_embed", "decoder.net.pos_emb.emb.weight")


def fit_position_tables(state: dict[str, torch.Tensor],
                        model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` with each position table smaller than ``model``'s placed in the leading (top-left)
    part of the model's own table; returns it and the names of the tables fitted.

    This lets ``load_chkpt`` start a model with a larger canvas (max_height, max_width) or a longer
    max_seq_len from a smaller one's weights: every position the old table covers keeps its code,
    so what fitted the old model reads exactly as before, and the new positions keep their fresh
    initialisation until training teaches them.  Tables that are larger, or differ in another
    way, are left for ``load_state_dict`` to refuse.
    """
    own = model.state_dict()
    fitted, names = dict(state), []
    for key in POSITION_TABLES:
        if key not in state or key not in own or state[key].shape == own[key].shape:
            continue
        old, new = state[key], own[key].detach().clone()
        shrinks = old.dim() != new.dim() or any(o > n for o, n in zip(old.shape, new.shape, strict=True))
        if shrinks or old.shape[-1] != new.shape[-1]:
            continue
        new[tuple(slice(0, size) for size in old.shape)] = old
        fitted[key] = new
        names.append(f"{key} {tuple(old.shape)} -> {tuple(new.shape)}")
    return fitted, names


DECODER_LAYERS = "decoder.net.attn_layers.layers."


def _output_projections(block: torch.nn.Module) -> list[torch.nn.Linear]:
    """The linear layers whose output a decoder block adds to the residual stream."""
    if isinstance(block, Attention):
        return [m for m in block.to_out.modules() if isinstance(m, torch.nn.Linear)]
    if isinstance(block, FeedForward):
        return [m for m in block.ff if isinstance(m, torch.nn.Linear)][-1:]
    return []


def grow_decoder(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` completed with the decoder blocks ``model`` has beyond those of ``state``; returns
    it and the number of blocks added (0 when the depths match or the checkpoint is deeper).

    The added blocks (stacked on top of the old ones) keep their fresh initialisation except their
    output projections, which start at zero: each block then adds nothing to the residual stream,
    so the grown model computes exactly what the checkpoint did, and training starts from the
    checkpoint's function rather than from a perturbed one.  Gradients still reach the zeroed
    projections (their input is not zero), so the new blocks start learning at the first step.
    """
    def block_index(key: str) -> int | None:
        return int(key[len(DECODER_LAYERS):].split(".", 1)[0]) if key.startswith(DECODER_LAYERS) else None

    old = {i for i in map(block_index, state) if i is not None}
    layers = model.decoder.net.attn_layers.layers
    if not old or len(layers) <= max(old) + 1:
        return state, 0
    first_new = max(old) + 1
    zero = {id(p) for i in range(first_new, len(layers)) for lin in _output_projections(layers[i][1])
            for p in lin.parameters()}
    params = dict(model.named_parameters())
    grown = dict(state)
    for key, value in model.state_dict().items():
        index = block_index(key)
        if index is not None and index >= first_new:
            grown[key] = torch.zeros_like(value) if key in params and id(params[key]) in zero else value.clone()
    return grown, len(layers) - first_new


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: avx512_bf16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _use_bf16(device: torch.device, cpu_bf16: bool) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if cpu_bf16 and not cpu_has_native_bf16():
        print("note: cpu_bf16 is set but this CPU has no native bf16; training in fp32", file=sys.stderr)
        return False
    return cpu_bf16


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Logger:
    """metrics.jsonl always; wandb when the config asks for it (never prompting)."""

    def __init__(self, run_dir: Path, config: Config, resume: bool):
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        if config.train.wandb:
            try:
                import wandb  # optional dependency
            except ImportError:
                raise ConfigError("wandb: true needs the wandb package (pip install 'pix2tex[wandb]')") from None
            # Without a terminal wandb would wait for a key on stdin: log offline instead.
            mode = "online" if (sys.stdin.isatty() or os.environ.get("WANDB_API_KEY")) else "offline"
            self.wandb = wandb.init(project="pix2tex", name=config.train.name, id=config.train.id,
                                    resume="allow" if resume else None, config=config.to_dict(), mode=mode,
                                    dir=str(run_dir))

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


class _NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class CheckpointWriter:
    """Everything a run writes besides metrics: model folders (``best/``, ``last/``) and the resume
    state ``last.pt``, all atomically and on rank 0 only."""

    run_dir: Path
    model: Model
    config: Config
    tokenizer: LatexTokenizer
    optimizer: torch.optim.Optimizer
    scheduler: Any
    is_main: bool
    ema: ModelEmaV3 | None = None  # with ema_decay: the folders get its weights, last.pt both

    def folder(self, name: str, meta: dict[str, Any]) -> None:
        if self.is_main:
            weights = self.model if self.ema is None else self.ema.module
            save_model_folder(self.run_dir / name, weights, self.config.model, self.tokenizer, meta)

    def state(self, *, step: int, epoch: int, batch: int, best_bleu: float, cpu_seconds: float,
              ema_updates: int = 0) -> None:
        """``last.pt``: ``batch`` is the next batch of ``epoch`` to train on."""
        if self.is_main:
            save_resume_state(self.run_dir / "last.pt", {
                "format": "pix2tex-resume", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": step, "epoch": epoch, "batch": batch,
                "best_bleu": best_bleu, "rng": _rng_state(), "config": self.config.to_dict(),
                "cpu_seconds": cpu_seconds,
                **({} if self.ema is None else {"ema": self.ema.module.state_dict(), "ema_updates": ema_updates}),
            })


def _last_folder_step(run_dir: Path) -> int:
    """The step the run's ``last/`` folder was written at (-1: none, or unreadable)."""
    try:
        return int(read_folder_files(run_dir / "last")[2].get("step", -1))
    except (CheckpointError, TypeError, ValueError):
        return -1


def check_resumable(saved: dict[str, Any], config: Config) -> None:
    """Refuse to resume a run whose model settings changed: its weights would not fit, or worse,
    fit and mean something else.  Training settings (learning rate, data, steps) may change."""
    current = config.to_dict()
    changed = [f.name for f in dataclasses.fields(config.model) if saved.get(f.name) != current[f.name]]
    if changed:
        raise ConfigError(f"--resume: model settings differ from the saved run: {', '.join(changed)}")


def train_step(net: torch.nn.Module, model: Model, batch: Any, optimizer: torch.optim.Optimizer, scheduler: Any, *,
               t: TrainConfig, ddp: Dist, device: torch.device, use_bf16: bool) -> tuple[torch.Tensor, float]:
    """One optimizer step on a global batch: (the loss, summed over ranks, as a tensor; the learning rate used).

    Every rank prepared the whole global batch (the same canvas and padding as one process would
    use) and trains on its own contiguous share of it, in micro-batches of ``t.micro`` rows; the
    loss is the mean over the tokens of the whole global batch, whatever the split.
    """
    rows = ddp.rows(batch.images.shape[0])
    images, ids = batch.images[rows].to(device), batch.ids[rows].to(device)
    sizes = None if batch.sizes is None else batch.sizes[rows]
    total = images.shape[0]
    batch_tokens = ddp.all_sum(float((ids[:, 1:] != PAD_ID).sum()), device)
    loss_sum = torch.zeros((), device=device)
    for lo in range(0, total, t.micro):
        micro_ids = ids[lo : lo + t.micro]
        last = lo + t.micro >= total
        with (net.no_sync() if ddp.active and not last else contextlib.nullcontext()), \
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = net(images[lo : lo + t.micro], micro_ids, sizes=None if sizes is None else sizes[lo : lo + t.micro],
                      label_smoothing=t.label_smoothing)
            tokens = (micro_ids[:, 1:] != PAD_ID).sum()
            part = out.loss * tokens / batch_tokens
            (part * ddp.world).backward()  # DDP divides by world when it averages
        loss_sum += part.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return ddp.sum_tensor(loss_sum), lr


def train(config: Config, resume: bool = False, device: torch.device | None = None,
          progress: bool = True) -> TrainResult:
    """Train according to ``config``; returns where it stopped.  Importable and testable."""
    t = config.train
    device = device or _device(False)
    ddp = init_from_env(device.type, t.dist_timeout_s)  # SINGLE unless started by torchrun
    try:
        return _train(config, resume, device, progress, ddp)
    finally:
        ddp.close()


@dataclass
class Run:
    """A training run between two steps: what the loop works with, and what ``last.pt`` keeps."""

    config: Config
    dir: Path
    ddp: Dist
    device: torch.device
    use_bf16: bool
    model: Model
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: ModelEmaV3 | None  # with ema_decay: the running average of the weights
    train_set: Im2LatexDataset
    val_set: Im2LatexDataset | None
    tokenizer: LatexTokenizer
    writer: CheckpointWriter
    logger: _Logger | _NullLogger
    total_steps: int
    step: int = 0
    epoch: int = 0
    next_batch: int = 0  # the next batch of ``epoch`` to train on
    best_bleu: float = -1.0
    ema_updates: int = 0
    cpu_before: float = 0.0  # CPU seconds of the run's earlier processes (resume)
    cpu_start: float = dataclasses.field(default_factory=time.process_time)

    def cpu_seconds(self) -> float:
        """CPU seconds of the whole run so far: this process (all its threads) plus earlier ones."""
        return self.cpu_before + time.process_time() - self.cpu_start

    def stepped(self) -> None:
        """Count a finished optimizer step (and fold it into the weight average)."""
        self.step += 1
        self.next_batch += 1
        if self.ema is not None:
            self.ema_updates += 1
            self.ema.update(self.model, step=self.ema_updates)

    def save_state(self) -> None:
        self.writer.state(step=self.step, epoch=self.epoch, batch=self.next_batch, best_bleu=self.best_bleu,
                          cpu_seconds=self.cpu_seconds(), ema_updates=self.ema_updates)


def _start_weights(model: Model, t: TrainConfig, is_main: bool) -> None:
    """A new run's first weights: ``load_chkpt``'s, fitted to the model (wider position tables,
    more decoder blocks), or the model's own initialisation without one."""
    if t.load_chkpt is None:
        return
    weights, widened = fit_position_tables(_weights_from(t.load_chkpt), model)
    weights, added = grow_decoder(weights, model)
    model.load_state_dict(weights)
    if is_main:
        print(f"loaded weights from {t.load_chkpt}", file=sys.stderr)
        for table in widened:
            print(f"  position table widened: {table}", file=sys.stderr)
        if added:
            print(f"  decoder grown by {added} blocks (output projections at zero)", file=sys.stderr)


def _weight_average(model: Model, t: TrainConfig, saved: dict[str, Any] | None, step: int,
                    is_main: bool) -> ModelEmaV3 | None:
    """The running average of the weights (``ema_decay``), restored from a resume state's."""
    if not t.ema_decay:
        return None
    # With warmup_power 1 the decay of update k is min(1 - 1/k, ema_decay): a plain average of
    # all updates so far until about 1/(1 - ema_decay) of them, so a new average (a new run, or
    # a resumed one that had none) weighs the weights it started from no more than any later step's.
    ema = ModelEmaV3(model, decay=t.ema_decay, use_warmup=True, warmup_gamma=1.0, warmup_power=1.0)
    if saved is not None:
        ema.module.load_state_dict(saved)
    elif step and is_main:
        print(f"ema_decay {t.ema_decay}: the average of the weights starts at step {step}", file=sys.stderr)
    return ema


def build_run(config: Config, resume: bool, device: torch.device, ddp: Dist) -> Run:
    """A new run (``load_chkpt``'s weights, or fresh ones), or with ``resume`` the one ``last.pt`` holds."""
    t, m = config.train, config.model
    if ddp.active:
        if t.batchsize % ddp.world:
            raise ConfigError(f"batchsize ({t.batchsize}) must be a multiple of the number of processes "
                              f"({ddp.world}): it is the global batch, split evenly over them")
        if device.type == "cuda":
            device = torch.device("cuda", ddp.local_rank)
    run_dir = Path(t.model_path) / t.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, val_set, tokenizer = load_datasets(config)

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model = get_model(m).to(device)
    if ddp.is_main:
        procs = f"; {ddp.world} processes" if ddp.active else ""
        print(f"{model_summary(model)}; device {device}{procs}", file=sys.stderr)
    total_steps = t.max_steps if t.max_steps is not None else t.epochs * len(train_set.batches(0))
    state = load_resume_state(run_dir / "last.pt") if resume else None
    # A state saved before parameter groups existed holds one group: it resumes with one, exactly.
    one_group = state is not None and len(state["optimizer"]["param_groups"]) == 1
    optimizer = build_optimizer(model, config, one_group=one_group)
    scheduler = build_scheduler(optimizer, config, total_steps)
    where: dict[str, Any] = {}
    if state is not None:
        check_resumable(state["config"], config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        where = {"step": state["step"], "epoch": state["epoch"], "next_batch": state["batch"],
                 "best_bleu": state["best_bleu"],
                 "cpu_before": float(state.get("cpu_seconds", 0.0)),  # absent in states before it was kept
                 "ema_updates": int(state.get("ema_updates", 0)) if state.get("ema") is not None else 0}
        _set_rng_state(state["rng"])
        if ddp.is_main:
            print(f"resumed {run_dir / 'last.pt'} at step {where['step']} (epoch {where['epoch']}, "
                  f"batch {where['next_batch']})", file=sys.stderr)
    else:
        _start_weights(model, t, ddp.is_main)
    ema = _weight_average(model, t, None if state is None else state.get("ema"), where.get("step", 0),
                          ddp.is_main)
    state = None  # the saved tensors are in the model and optimizer now: free the copies
    # Only rank 0 writes: config, metrics, model folders and resume states.
    if ddp.is_main:
        save_config(config, run_dir / "config.yaml")
    logger = _Logger(run_dir, config, resume) if ddp.is_main else _NullLogger()
    use_bf16 = _use_bf16(device, t.cpu_bf16)
    if use_bf16 and device.type == "cpu":
        model.encoder.use_fused_attention(False)  # same arithmetic; the fused kernel's bf16 backward is slow here
    return Run(config=config, dir=run_dir, ddp=ddp, device=device, use_bf16=use_bf16, model=model,
               # DDP averages gradients over the ranks (each holds its own share of every global batch).
               net=torch.nn.parallel.DistributedDataParallel(model) if ddp.active else model,
               optimizer=optimizer, scheduler=scheduler, ema=ema, train_set=train_set, val_set=val_set,
               tokenizer=tokenizer, logger=logger, total_steps=total_steps,
               writer=CheckpointWriter(run_dir, model, config, tokenizer, optimizer, scheduler, ddp.is_main, ema),
               **where)


def validate_and_save(run: Run, bar: tqdm) -> None:
    """Score the validation set (rank 0; the others wait at the next step's all-reduce), keep the
    best model folder by BLEU, and write ``last/`` and ``last.pt``."""
    t = run.config.train
    # The model reads images measured and scaled as its training images were.
    meta: dict[str, Any] = {"step": run.step, "epoch": run.epoch, "glyph_scale": t.glyph_scale,
                            "glyph_estimator": run.train_set.glyph_estimator}
    if run.val_set is not None and len(run.val_set) and run.ddp.is_main:
        # val_* score the weights the folders hold (the average, with ema_decay)
        record: dict[str, Any] = {"step": run.step, "epoch": run.epoch}
        if run.ema is not None:
            raw, _ = validate(run.model, run.val_set, run.tokenizer, t.valbatches, run.device)
            record.update({f"raw_val_{k}": v for k, v in raw.as_dict().items()})
            bar.write(f"step {run.step}, weights of this step: {raw}")
        scores, samples = validate(run.model if run.ema is None else run.ema.module, run.val_set, run.tokenizer,
                                   t.valbatches, run.device)
        run.logger.log({**record, **{f"val_{k}": v for k, v in scores.as_dict().items()}})
        bar.write(f"step {run.step}{'' if run.ema is None else ', average'}: {scores}")
        for pred, ref in samples[: t.test_samples]:
            bar.write(f"  ref  {ref}\n  pred {pred}")
        meta["val"] = scores.as_dict()
        if scores.bleu > run.best_bleu:
            run.best_bleu = scores.bleu
            run.writer.folder("best", meta)
    run.writer.folder("last", meta)
    run.save_state()


class _StopRequest:
    """While entered, SIGTERM and Ctrl+C ask the loop to stop: it looks at :attr:`requested` after
    each step (all ranks agree on it under torchrun, so they save once), saves and stops.

    Stopping only between steps, in every mode: a signal that landed inside ``optimizer.step()``
    (two parameter groups) or the weight-average update and raised there would save a state that
    is half one step, half the next.  A second Ctrl+C stops at once, unsaved.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handlers' signature
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopRequest:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train(config: Config, resume: bool, device: torch.device, progress: bool, ddp: Dist) -> TrainResult:
    run, t = build_run(config, resume, device, ddp), config.train
    run.model.train()
    loss = torch.full((), float("nan"))
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not progress or not ddp.is_main,
               dynamic_ncols=True, desc="train")
    finished = run.step >= run.total_steps  # the step limit or the CPU budget is reached
    saved_at = _last_folder_step(run.dir) if resume else -1  # the step of the run's last/ folder
    with _StopRequest() as stop:
        try:
            while not finished and run.epoch < t.epochs:
                loader = torch.utils.data.DataLoader(
                    BatchDataset(run.train_set, run.epoch, start=run.next_batch), batch_size=None, shuffle=False,
                    num_workers=t.num_workers, collate_fn=collate_batch, persistent_workers=False)
                tick = time.perf_counter()
                for batch in loader:
                    loss, lr = train_step(run.net, run.model, batch, run.optimizer, run.scheduler, t=t, ddp=ddp,
                                          device=run.device, use_bf16=run.use_bf16)
                    run.stepped()
                    now = time.perf_counter()
                    rate = batch.images.shape[0] / max(now - tick, 1e-9)  # samples of the global batch
                    tick = now
                    bar.update(1)
                    if not bar.disable:
                        bar.set_postfix(loss=f"{float(loss):.4f}", samples_s=f"{rate:.1f}")
                    if run.step % t.log_every == 0 or run.step == 1:  # the loss leaves the device only here
                        run.logger.log({"step": run.step, "epoch": run.epoch, "loss": float(loss), "lr": lr,
                                        "samples_per_s": rate, "cpu_s": round(run.cpu_seconds(), 1)})
                    over_budget = t.max_cpu_minutes is not None and run.cpu_seconds() >= 60 * t.max_cpu_minutes
                    out_of_cpu = ddp.any(over_budget, run.device)
                    if ddp.any(stop.requested, run.device):
                        raise _Stop()
                    finished = run.step >= run.total_steps or out_of_cpu
                    if run.step % t.sample_freq == 0 or finished:
                        validate_and_save(run, bar)
                        saved_at = run.step
                    if finished:
                        break
                if not finished:  # the epoch's batches are done
                    run.epoch, run.next_batch = run.epoch + 1, 0
                    if run.epoch % t.save_freq == 0:
                        run.save_state()
            if saved_at != run.step:  # else last/ was written at this step, with its validation scores: keep it
                run.writer.folder("last", {"step": run.step, "epoch": run.epoch})
            run.save_state()  # where a later --resume starts (the next epoch, when they ran out)
        except _Stop:
            if ddp.is_main:
                bar.write(f"interrupted at step {run.step}: saving {run.dir / 'last.pt'} and {run.dir / 'last'}")
            run.save_state()
            run.writer.folder("last", {"step": run.step, "epoch": run.epoch})
            raise KeyboardInterrupt from None
        except KeyboardInterrupt:
            if ddp.is_main:
                bar.write(f"interrupted twice at step {run.step}: stopped without saving "
                          "(last.pt is the previous save)")
            raise
        finally:
            bar.close()
            run.logger.close()
    return TrainResult(run.step, run.epoch, run.best_bleu, float(loss), run.dir, ddp.is_main)


def override_args(settings: dict[str, Any]) -> list[str]:
    """``--set KEY=VALUE`` arguments that this command reads back as ``settings`` (None is null)."""
    out: list[str] = []
    for key, value in settings.items():
        text = "null" if value is None else value if isinstance(value, str) else json.dumps(value)
        out += ["--set", f"{key}={text}"]
    return out


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.train", description="Train a pix2tex model.")
    parser.add_argument("--config", required=True, help="YAML settings (see pix2tex/model/settings/)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last.pt")
    parser.add_argument("--no_cuda", "--no-cuda", action="store_true", help="train on the CPU")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the config file (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, _parse_overrides(args.overrides))
        result = train(config, resume=args.resume, device=_device(args.no_cuda), progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    except (ConfigError, DatasetError, TokenizerError, CheckpointError, DistributedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.is_main:
        return 0
    best = f"{result.best_bleu:.4f}" if result.best_bleu >= 0 else "n/a"
    print(f"done: step {result.step}, epoch {result.epoch}, last loss {result.last_loss:.4f}, "
          f"best val BLEU {best}; model folders in {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
