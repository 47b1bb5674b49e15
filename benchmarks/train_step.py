"""Where a training step's time goes, part by part, and the same step beside the public pix2tex 0.1.4.

    python -m benchmarks.train_step --profile [--configs default,seed,recipe] [--data DATA_DIR] --json
    python -m benchmarks.train_step --compare --pix2tex-python /path/to/venv014/bin/python --json
    python -m benchmarks.train_step --levers --configs recipe --json
    python -m benchmarks.train_step --throughput default,recipe,recipe_bf16 --data DATA_DIR --json

``--profile``: for each model config, one JSON line per part of a step on batch 32 of 64x320 images
and 48 target tokens (random weights, fp32, ``--threads``): CNN backbone, ViT blocks, decoder, loss
(forward + backward each, on detached inputs), the AdamW step, and the whole step; with ``--data``
also the data path (loading, augmentation and preprocessing of one real training batch of 32, as a
DataLoader worker does it).  Medians of 5 runs after 1 warm-up.

``--levers``: the whole step with bf16 autocast on the CPU, channels_last, torch.compile, the
encoder's explicit attention instead of PyTorch's fused kernel (alone and with bf16, as training on
the CPU runs), and with 120 target tokens instead of 48.

``--throughput``: real training runs (``python -m pix2tex.train``, DataLoader worker, augmentation)
on the real dataset for ``--steps`` steps each, validation excluded: median samples/s.

``--compare``: the whole step (zero_grad, forward, backward, clip, AdamW) of our configs and of
``pix2tex==0.1.4``'s model (its own venv: it pins timm 0.5.4 and x-transformers 0.15.0; random
weights) on the same work, in one run, so the ratio is measured on one machine at one time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.models import seed_config, time_runs
from pix2tex.config import ModelConfig, load_config

REPO = Path(__file__).resolve().parent.parent
BATCH, HEIGHT, WIDTH, TOKENS = 32, 64, 320, 48


def configs() -> dict[str, ModelConfig]:
    """The configs compared: seed-sized, the first bundled recipe (default.yaml) and the race's recipe."""
    default = load_config(REPO / "pix2tex" / "model" / "settings" / "default.yaml", check_files=False).model
    recipe = load_config(REPO / "pix2tex" / "model" / "settings" / "recipe.yaml", check_files=False).model
    return {"seed": seed_config(), "default": default, "recipe": recipe}


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    return statistics.median(time_runs(fn, warmup, repeats))


def _inputs(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 1, HEIGHT, WIDTH, generator=g)
    targets = torch.randint(4, cfg.num_tokens, (BATCH, TOKENS), generator=g)
    return images, targets


def whole_step(cfg: ModelConfig, lever: str = "none", tokens: int = TOKENS):
    """A closure running one full training step of ``cfg`` on fixed inputs, with one speed lever:
    "none", "bf16" (CPU autocast), "channels_last" (backbone memory format), "compile" (torch.compile),
    "explicit_attn" (the encoder without the fused attention kernel) or "bf16_explicit_attn" (both).
    The model is as ``get_model`` builds it, so "none" attends with the fused kernel."""
    from pix2tex.models import get_model

    torch.manual_seed(0)
    model = get_model(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, targets = _inputs(cfg)
    targets = targets[:, :1].repeat(1, tokens) if tokens != targets.shape[1] else targets
    forward = model
    if lever.endswith("explicit_attn"):
        model.encoder.use_fused_attention(False)
    if lever == "channels_last":
        model.encoder.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    elif lever == "compile":
        forward = torch.compile(model, dynamic=False)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever.startswith("bf16")):
            loss = forward(images, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def levers(name: str, cfg: ModelConfig) -> list[dict]:
    """The whole step of ``cfg`` with each lever, side by side; also 120 target tokens (the length
    of a typical im2latex formula in the word-level vocabulary)."""
    rows = []
    base = None
    for lever, tokens in (("none", TOKENS), ("bf16", TOKENS), ("channels_last", TOKENS), ("compile", TOKENS),
                          ("explicit_attn", TOKENS), ("bf16_explicit_attn", TOKENS),
                          ("none", 120), ("bf16", 120), ("bf16_explicit_attn", 120)):
        try:
            t = median_time(whole_step(cfg, lever, tokens), warmup=2 if lever == "compile" else 1)
        except Exception as exc:  # noqa: BLE001 - a lever this machine cannot use is reported, not fatal
            rows.append({"bench": "train_step_lever", "config": name, "lever": lever, "tokens": tokens,
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            continue
        base = t if (lever, tokens) == ("none", TOKENS) else base
        rows.append({"bench": "train_step_lever", "config": name, "lever": lever, "tokens": tokens,
                     "median_s": round(t, 4), "samples_per_s": round(BATCH / t, 2),
                     "vs_plain_48": round(base / t, 3), "threads": torch.get_num_threads()})
    return rows


def profile(name: str, cfg: ModelConfig, data: Path | None) -> list[dict]:
    import torch.nn.functional as F

    from pix2tex.models import get_model

    torch.manual_seed(0)
    model = get_model(cfg).train()
    images, targets = _inputs(cfg)
    vit = model.encoder.vit
    rows: dict[str, float] = {}

    if cfg.encoder_structure == "hybrid":
        backbone = vit.patch_embed.patches.backbone
        rows["backbone"] = median_time(lambda: backbone(images).float().mean().backward())
    with torch.no_grad():
        tokens0 = vit.patch_embed(images)
    tokens0 = torch.cat((vit.cls_token.expand(BATCH, -1, -1), tokens0), dim=1)

    def blocks():
        x = tokens0.detach().requires_grad_()
        vit.norm(vit.blocks(x)).mean().backward()

    rows["vit_blocks"] = median_time(blocks)
    with torch.no_grad():
        memory0 = model.encode(images)

    def decoder():
        memory = memory0.detach().requires_grad_()
        model.decoder(targets[:, :-1], memory).mean().backward()

    rows["decoder"] = median_time(decoder)
    with torch.no_grad():
        logits0 = model.decoder(targets[:, :-1], memory0)

    def loss():
        logits = logits0.detach().requires_grad_()
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1)).backward()

    rows["loss"] = median_time(loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    rows["optimizer"] = median_time(optimizer.step)
    rows["whole_step"] = median_time(whole_step(cfg))
    if data is not None:
        rows["data_path"] = _data_path_time(cfg, data)
    return [{"bench": "train_step_profile", "config": name, "part": part, "median_s": round(t, 4),
             "share_of_step": round(t / rows["whole_step"], 3), "threads": torch.get_num_threads()}
            for part, t in rows.items()]


def _data_path_time(cfg: ModelConfig, data: Path) -> float:
    """One training batch of 32 real samples: decode, augment, preprocess, tokenize (a worker's job)."""
    from pix2tex.dataset.dataset import Im2LatexDataset

    ds = Im2LatexDataset.load(data / "train.pkl", tokenizer=data / "tokenizer.json")
    ds.update(batchsize=BATCH, shuffle=True, test=False, max_seq_len=cfg.max_seq_len,
              max_dimensions=(cfg.max_width, cfg.max_height), patch_size=cfg.patch_size)
    batches = ds.batches(0)[:6]
    k = iter(range(len(batches)))
    return median_time(lambda: ds.prepare_data(batches[next(k)], augment_seed=1))


PIX2TEX_014 = r"""
import json, statistics, sys, time, torch
from munch import Munch
from pix2tex.models import get_model
torch.set_num_threads(int(sys.argv[1]))
args = Munch(dict(encoder_structure="hybrid", backbone_layers=[2, 3, 7], channels=1, dim=256, encoder_depth=4,
    heads=8, num_layers=4, num_tokens=8000, patch_size=16, max_height=192, max_width=672, max_seq_len=512,
    decoder_args={"attn_on_attn": True, "cross_attend": True, "ff_glu": True, "rel_pos_bias": False,
                  "use_scalenorm": False},
    pad_token=0, bos_token=1, eos_token=2, temperature=0.2, device="cpu", min_height=32, min_width=32,
    emb_dropout=0, wandb=False))
torch.manual_seed(0)
model = get_model(args).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
images = torch.randn(32, 1, 64, 320, generator=g)
tgt = torch.randint(4, 8000, (32, 48), generator=g)
mask = torch.ones_like(tgt, dtype=torch.bool)
def step():
    opt.zero_grad(set_to_none=True)
    encoded = model.encoder(images)
    loss = model.decoder(tgt, context=encoded, mask=mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
step()
times = []
for _ in range(5):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "params": sum(p.numel() for p in model.parameters())}))
"""


def compare(pix2tex_python: str, names: list[str]) -> list[dict]:
    """Whole-step times of our configs and of pix2tex 0.1.4's seed model, interleaved in one run."""
    threads = torch.get_num_threads()
    out = []
    # Run outside the repository so that its own `pix2tex` package, not ours, is imported.
    theirs = subprocess.run([pix2tex_python, "-c", PIX2TEX_014, str(threads)], capture_output=True, text=True,
                            check=True, cwd="/")
    ref = json.loads(theirs.stdout.strip().splitlines()[-1])
    out.append({"bench": "train_step_compare", "impl": "pix2tex-0.1.4", "config": "seed",
                "params_m": round(ref["params"] / 1e6, 2), "median_s": round(ref["median_s"], 4),
                "samples_per_s": round(BATCH / ref["median_s"], 2), "threads": threads})
    from pix2tex.models import count_parameters, get_model

    for name in names:
        cfg = configs()[name]
        t = median_time(whole_step(cfg))
        params = count_parameters(get_model(cfg))["total"]
        out.append({"bench": "train_step_compare", "impl": "ours", "config": name, "params_m": round(params / 1e6, 2),
                    "median_s": round(t, 4), "samples_per_s": round(BATCH / t, 2),
                    "speedup_vs_pix2tex_seed": round(ref["median_s"] / t, 2), "threads": threads})
    return out


RECIPES = {  # end-to-end throughput: config file + overrides (pinned to what RESULTS measured)
    "default": ("default.yaml", {}),
    "recipe": ("recipe.yaml", {"cpu_bf16": False, "length_pool": 0}),
    "recipe_bf16": ("recipe.yaml", {"cpu_bf16": True, "length_pool": 0}),
    "recipe_bf16_pool": ("recipe.yaml", {"cpu_bf16": True, "length_pool": 32}),
}


def training_rate(config_file: Path, settings: dict, steps: int, threads: int,
                  launcher: list[str] | None = None) -> float:
    """Median samples/s over steps 6..``steps`` of a real ``pix2tex.train`` run (validation off),
    started by ``launcher`` (default: this Python; torchrun for several processes)."""
    import os
    import tempfile

    from pix2tex.train import override_args

    with tempfile.TemporaryDirectory() as tmp:
        full = {"valdata": None, "testdata": None, "model_path": tmp, "name": "bench", "max_steps": steps,
                "log_every": 1, "sample_freq": 10**9, **settings}
        args = [*(launcher or [sys.executable]), "-m", "pix2tex.train", "--config", str(config_file), "--no-progress",
                *override_args(full)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(args, check=True, capture_output=True, env=env, cwd=REPO)
        records = [json.loads(line) for line in (Path(tmp) / "bench" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["samples_per_s"] for r in records if r["step"] > 5)


def throughput(names: list[str], data: Path, steps: int, threads: int) -> list[dict]:
    """Samples/s of real training runs (``pix2tex.train`` on ``data``, DataLoader worker and
    augmentation included, validation excluded): the median over steps 6..``steps``."""
    rows = []
    for name in names:
        file, overrides = RECIPES[name]
        tokenizer = "tokenizer_tokens.json" if file == "recipe.yaml" else "tokenizer.json"
        settings = {"data": f"{data}/train.pkl", "tokenizer": f"{data}/{tokenizer}", **overrides}
        rate = training_rate(REPO / "pix2tex/model/settings" / file, settings, steps, threads)
        rows.append({"bench": "train_throughput", "recipe": name, "steps": steps,
                     "samples_per_s": round(rate, 2), "threads": threads})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="time each part of a step")
    parser.add_argument("--compare", action="store_true", help="whole steps beside pix2tex 0.1.4")
    parser.add_argument("--levers", action="store_true",
                        help="bf16 autocast, channels_last, torch.compile, explicit attention")
    parser.add_argument("--throughput", help="comma-separated recipes (default,recipe,recipe_bf16): real "
                                               "training runs on --data, samples/s")
    parser.add_argument("--steps", type=int, default=60, help="training steps per --throughput run")
    parser.add_argument("--configs", default="seed,default,recipe")
    parser.add_argument("--data", type=Path, help="create_data.sh output: also time the data path")
    parser.add_argument("--pix2tex-python", help="python of a venv with pix2tex==0.1.4 (for --compare)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="JSON lines (the default output anyway)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in configs()]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; known: {sorted(configs())}")
    rows: list[dict] = []
    if args.profile:
        for name in names:
            rows += profile(name, configs()[name], args.data)
    if args.throughput:
        if args.data is None:
            parser.error("--throughput needs --data")
        rows += throughput(args.throughput.split(","), args.data.resolve(), args.steps, args.threads)
    if args.levers:
        for name in names:
            rows += levers(name, configs()[name])
    if args.compare:
        if not args.pix2tex_python:
            parser.error("--compare needs --pix2tex-python")
        rows += compare(args.pix2tex_python, names)
    if not rows:
        parser.error("give --profile, --levers and/or --compare")
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
