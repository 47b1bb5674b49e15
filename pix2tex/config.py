"""Typed, validated settings.

A YAML file (flat keys, as in the seed's ``config-hybrid.yaml``) is read into a :class:`Config`
made of two dataclasses: :class:`ModelConfig` (what the network looks like, saved with every
checkpoint) and :class:`TrainConfig` (data, optimisation, logging).  Every key belongs to exactly
one of them.  A misspelled key, a value of the wrong type or a missing input file is a
:class:`ConfigError` with one line naming the key, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pix2tex.fileio import FileReadError, atomic_write_text, read_limited
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "ConfigError", "ModelConfig", "TrainConfig", "Config", "load_config", "config_from_dict", "save_config",
    "check_corpus_weights", "read_settings_yaml",
]


class ConfigError(ValueError):
    """A settings file or value is wrong; the message is one line naming the key."""


# Upper bounds of the model's sizes: far above any sensible model, far below what exhausts memory
# while building one (a crafted config.yaml with num_layers: 100000000 must fail at once).
_MODEL_LIMITS = {"channels": 4, "dim": 4096, "encoder_depth": 64, "heads": 64, "num_layers": 64,
                 "num_tokens": 1_000_000, "patch_size": 64, "max_height": 8192, "max_width": 8192,
                 "max_seq_len": 16384}


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelConfig:
    """The network: encoder (hybrid ResNetV2+ViT or plain ViT) and Transformer decoder."""

    encoder_structure: str = "hybrid"  # "hybrid" | "vit"
    backbone_layers: list[int] = field(default_factory=lambda: [2, 3, 7])  # ResNetV2 stage depths
    # Output channels of each ResNetV2 stage ([] = timm's 256, 512, 1024, …); narrower stages are
    # much cheaper and still ample for glyphs about 11 pixels tall.
    backbone_channels: list[int] = field(default_factory=list)
    stem_channels: int = 64  # channels of the backbone's first convolution
    # "group": timm's GroupNorm (statistics over the whole padded canvas, so an image's features
    # depend on its batch's padding); "batch": BatchNorm (fixed statistics at inference).
    backbone_norm: str = "group"
    # Padded patches are hidden from the encoder's attention and the decoder's cross-attention,
    # so an image reads the same alone and in a batch of larger images.
    mask_padding: bool = False
    channels: int = 1
    dim: int = 256  # width shared by encoder and decoder
    encoder_depth: int = 4  # ViT blocks
    heads: int = 8
    num_layers: int = 4  # decoder blocks
    num_tokens: int = 8000  # vocabulary size (>= the tokenizer's)
    patch_size: int = 16
    max_height: int = 192
    max_width: int = 672
    max_seq_len: int = 512  # longest token sequence the decoder handles (BOS/EOS included)
    emb_dropout: float = 0.0
    decoder_args: dict = field(default_factory=dict)  # extra x_transformers.Decoder arguments

    def __post_init__(self) -> None:
        if self.encoder_structure not in ("hybrid", "vit"):
            raise ConfigError(f"encoder_structure must be 'hybrid' or 'vit', got {self.encoder_structure!r}")
        for name in ("channels", "dim", "encoder_depth", "heads", "num_layers", "num_tokens",
                     "patch_size", "max_height", "max_width", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name, top in _MODEL_LIMITS.items():
            if getattr(self, name) > top:
                raise ConfigError(f"{name} must be at most {top:,}, got {getattr(self, name):,}")
        if len(self.backbone_layers) > 8 or any(not 0 < n <= 64 for n in self.backbone_layers):
            raise ConfigError("backbone_layers must list at most 8 stages of 1 to 64 blocks")
        if any(c > 4096 for c in self.backbone_channels) or self.stem_channels > 1024:
            raise ConfigError("backbone_channels must be at most 4096 and stem_channels at most 1024")
        if len(str(self.decoder_args)) > 2000:
            raise ConfigError("decoder_args is too large")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.max_height % self.patch_size or self.max_width % self.patch_size:
            raise ConfigError(
                f"max_height/max_width ({self.max_height}x{self.max_width}) must be multiples of "
                f"patch_size ({self.patch_size})")
        if self.backbone_norm not in ("group", "batch"):
            raise ConfigError(f"backbone_norm must be 'group' or 'batch', got {self.backbone_norm!r}")
        if self.backbone_channels and len(self.backbone_channels) != len(self.backbone_layers):
            raise ConfigError(f"backbone_channels ({list(self.backbone_channels)}) must give one width per stage of "
                              f"backbone_layers ({list(self.backbone_layers)})")
        if any(c <= 0 for c in self.backbone_channels) or self.stem_channels <= 0:
            raise ConfigError("backbone_channels and stem_channels must be positive")
        if self.encoder_structure == "hybrid" and not self.backbone_layers:
            raise ConfigError("backbone_layers must list at least one ResNetV2 stage for a hybrid encoder")


@dataclass(frozen=True)
class TrainConfig:
    """Data, optimisation, validation and logging settings (the seed's keys keep their meaning)."""

    data: str | None = None  # train .pkl
    # Sampling weight per training corpus (the render folder named after its formula file, e.g.
    # {im2latex_val: 4}): 4 means its samples appear four times per epoch, 0.5 half of them.
    corpus_weights: dict = field(default_factory=dict)
    valdata: str | None = None
    testdata: str | None = None
    tokenizer: str | None = None
    load_chkpt: str | None = None  # start from these weights (not a resume)
    model_path: str = "checkpoints"  # where runs are written
    name: str = "pix2tex"  # run folder name under model_path
    output_path: str = "outputs"
    id: str | None = None
    wandb: bool = False
    debug: bool = False
    seed: int = 42
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (None: run all epochs)
    batchsize: int = 10
    micro_batchsize: int = -1  # -1: whole batch at once; else gradient accumulation
    testbatchsize: int = 20
    valbatches: int = 100  # validation batches per evaluation
    optimizer: str = "Adam"  # "Adam" | "AdamW"
    # "StepLR" | "OneCycleLR" | "WarmupCosine" (linear warm-up over warmup_steps to max_lr, then a
    # cosine to min_lr at max_steps: one schedule for a whole run that is resumed many times).
    scheduler: str = "StepLR"
    warmup_steps: int = 500
    min_lr: float = 1e-5
    label_smoothing: float = 0.0
    # Stop (saving the resume state) once the run has used this many CPU minutes in total, counted
    # over every resume; compares recipes fairly on a machine shared with other work.
    max_cpu_minutes: float | None = None
    # Train only on samples of at most this many target tokens (0: no limit).  A curriculum is a
    # run that starts with a small limit and is resumed with a larger one (--resume --set …).
    max_label_tokens: int = 0
    # Batches of similar label length: pools of this many batches are sorted by length before they
    # are cut into batches (0: off, the order earlier runs used).  8 cuts padded target tokens from
    # about half to a few percent.
    length_pool: int = 0
    lr: float = 5e-4
    max_lr: float = 5e-4  # OneCycleLR peak
    pct_start: float = 0.3  # OneCycleLR warm-up share
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    gamma: float = 0.9995  # StepLR decay
    lr_step: int = 30  # StepLR period in steps
    clip_grad: float = 1.0
    sample_freq: int = 1000  # validate every this many steps
    save_freq: int = 1  # also write the resume state (last.pt) at the end of every this many epochs
    temperature: float = 0.2  # the seed's key; nothing reads it (validation decodes greedily)
    test_samples: int = 5
    num_workers: int = 0  # DataLoader worker processes
    min_height: int = 32
    min_width: int = 32
    max_dimensions_filter: bool = True  # drop images larger than max_height x max_width
    # bf16 autocast on the CPU (GPUs with bf16 always use it): 1.6x faster steps where the CPU has
    # native bf16 (avx512_bf16 / AMX); where it has none, training stays in fp32 and says so.
    cpu_bf16: bool = False
    # torchrun: how long a collective may wait for the other processes (a rank that died, or rank 0
    # validating) before every rank stops with an error instead of hanging.
    dist_timeout_s: float = 1800.0
    augment: bool = True  # use train_transform for training batches
    augment_level: str = "full"  # "light": small jitter, blur and contrast only; "full": everything
    # Training and validation images are scaled so their glyphs are glyph_scale x DEFAULT_GLYPH_HEIGHT
    # (11.3 px) tall; the model folders' meta.json says so, and prediction reads at that size.
    # 1.2 trains on more pixels per glyph for 16-pixel patches (docs/RESULTS.md) but leaves out more
    # of the widest formulas (max_dimensions_filter).
    glyph_scale: float = 1.0
    log_every: int = 10  # steps between metric lines in metrics.jsonl
    # Keep an exponential moving average of the weights, updated after every step (0: off).  The
    # model folders (best/, last/) then hold the averaged weights, validated as such; last.pt keeps
    # both.  0.999 averages over about the last 1,000 steps: late in a run, while the learning rate
    # is still high, the average reads better than the weights of any one step (docs/RESULTS.md).
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("Adam", "AdamW"):
            raise ConfigError(f"optimizer must be 'Adam' or 'AdamW', got {self.optimizer!r}")
        if self.scheduler not in ("StepLR", "OneCycleLR", "WarmupCosine"):
            raise ConfigError(f"scheduler must be 'StepLR', 'OneCycleLR' or 'WarmupCosine', got {self.scheduler!r}")
        if self.scheduler == "WarmupCosine" and self.max_steps is None:
            raise ConfigError("scheduler WarmupCosine needs max_steps (the length of its cosine)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_steps < 0 or self.max_label_tokens < 0 or self.length_pool < 0:
            raise ConfigError("warmup_steps, max_label_tokens and length_pool must be >= 0")
        if self.augment_level not in ("light", "full"):
            raise ConfigError(f"augment_level must be 'light' or 'full', got {self.augment_level!r}")
        check_glyph_scale(self.glyph_scale)
        if self.max_cpu_minutes is not None and self.max_cpu_minutes <= 0:
            raise ConfigError(f"max_cpu_minutes must be positive, got {self.max_cpu_minutes}")
        for name in ("batchsize", "testbatchsize", "epochs", "sample_freq", "valbatches", "lr_step"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.micro_batchsize == 0 or self.micro_batchsize < -1:
            raise ConfigError(f"micro_batchsize must be -1 or positive, got {self.micro_batchsize}")
        if len(self.betas) != 2:
            raise ConfigError(f"betas must have two values, got {self.betas}")
        # The optimiser's numbers: a NaN or infinite learning rate trains to NaN weights without an
        # error, and zero or a negative one trains nothing or backwards, so all are refused here.
        # min_lr may be 0 (a cosine that ends at rest is common); it must stay below max_lr.
        for name in ("lr", "max_lr", "gamma", "pct_start"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive finite number, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "clip_grad"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.gamma > 1:
            raise ConfigError(f"gamma must be at most 1 (a decay per lr_step), got {self.gamma}")
        if self.pct_start >= 1:
            raise ConfigError(f"pct_start must be below 1 (the warm-up share of OneCycleLR), got {self.pct_start}")
        if self.min_lr >= self.max_lr and self.scheduler == "WarmupCosine":
            raise ConfigError(f"min_lr ({self.min_lr}) must be below max_lr ({self.max_lr})")
        if not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        check_corpus_weights(self.corpus_weights)

    @property
    def micro(self) -> int:
        return self.batchsize if self.micro_batchsize == -1 else min(self.micro_batchsize, self.batchsize)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved flat settings, as they would be written in a YAML file."""
        return {**dataclasses.asdict(self.model), **dataclasses.asdict(self.train)}

    def replace(self, **changes: Any) -> Config:
        """A copy with some flat keys changed (validated like a file)."""
        return config_from_dict({**self.to_dict(), **changes}, source="<override>", check_files=False)


GLYPH_SCALE_RANGE = (0.5, 2.0)
"""Glyph sizes models are trained and read at, as multiples of preprocess.DEFAULT_GLYPH_HEIGHT."""


def check_glyph_scale(value: Any, source: str | None = None) -> float:
    """``value`` as a glyph scale: a one-line ConfigError (starting with ``source`` when given)
    unless it is a number in ``GLYPH_SCALE_RANGE``.  Shared by the config, datasets and model folders."""
    lo, hi = GLYPH_SCALE_RANGE
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}glyph_scale must be a number from {lo} to {hi}, got {value!r}")
    return float(value)


def check_corpus_weights(weights: dict) -> dict[str, float]:
    """``weights`` ({corpus: weight}) as floats; a weight that is not a finite number >= 0 is a
    one-line ConfigError naming the corpus.  Shared by the config and the dataset."""
    out = {}
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise ConfigError(f"corpus_weights: weight of '{name}' must be a number >= 0, got {weight!r}")
        out[str(name)] = float(weight)
    return out


_MODEL_KEYS = {f.name: f for f in dataclasses.fields(ModelConfig)}
_TRAIN_KEYS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Seed keys with a fixed meaning here: accepted only when they agree with the tokenizer module.
_FIXED_KEYS = {"pad_token": PAD_ID, "bos_token": BOS_ID, "eos_token": EOS_ID}
# Keys that name input files; checked for existence before any work starts.
_FILE_KEYS = ("data", "valdata", "testdata", "tokenizer", "load_chkpt")
# Seed spellings read as today's names.
_ALIASES = {"test_data": "testdata", "load_ckpt": "load_chkpt"}
# Seed keys accepted so the seed's settings files load, but acted on by nothing here: a value other
# than the default gets a warning that says what to use instead.
_UNUSED_SEED_KEYS = {
    "testdata": "pix2tex eval takes the test set as --data",
    "output_path": "pix2tex eval writes its predictions to --out",
    "debug": "there is no debug mode; metrics.jsonl and the log hold every step's numbers",
    "temperature": "validation decodes greedily; sample with Model.generate(temperature=...)",
    "max_dimensions_filter": "training always leaves out images whose prepared size exceeds max_height x "
                             "max_width (prediction shrinks such images to fit)",
}


class SeedKeyWarning(UserWarning):
    """A seed setting was given a value, but nothing in this implementation reads it."""


def _check_type(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Return ``value`` coerced to ``annotation`` or raise a one-line ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0], source)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, args[0], source) for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled annotation {annotation}")  # a bug in this module


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", check_files: bool = True) -> Config:
    """Validate flat settings into a :class:`Config`; unknown keys and bad values are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(raw).__name__}")
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    hints_model = typing.get_type_hints(ModelConfig)
    hints_train = typing.get_type_hints(TrainConfig)
    for key, value in raw.items():
        key = _ALIASES.get(key, key)
        if key in _FIXED_KEYS:
            if value != _FIXED_KEYS[key]:
                raise ConfigError(f"{source}: '{key}' is fixed to {_FIXED_KEYS[key]} by the tokenizer, got {value!r}")
            continue
        if key in _MODEL_KEYS:
            model_kw[key] = _check_type(key, value, hints_model[key], source)
        elif key in _TRAIN_KEYS:
            train_kw[key] = _check_type(key, value, hints_train[key], source)
        else:
            known = [*_MODEL_KEYS, *_TRAIN_KEYS]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
    try:
        config = Config(model=ModelConfig(**model_kw), train=TrainConfig(**train_kw))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for key, instead in _UNUSED_SEED_KEYS.items():
        if key in train_kw and train_kw[key] != _TRAIN_KEYS[key].default:
            warnings.warn(f"{source}: '{key}' is a seed setting that nothing here reads ({instead})",
                          SeedKeyWarning, stacklevel=2)
    if check_files:
        for key in _FILE_KEYS:
            value = getattr(config.train, key)
            if value is not None and not os.path.exists(value):
                raise ConfigError(f"{source}: '{key}' names a missing file: {value}")
    return config


MAX_SETTINGS_BYTES = 1 * 2**20  # a settings file (config.yaml) is small


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases: a few lines of nested aliases ("billion laughs")
    expand to billions of nodes.  Settings files never need them."""

    def compose_node(self, parent, index):  # PyYAML's signature
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML anchors and aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def read_settings_yaml(text: str, source: str) -> Any:
    """Parse settings YAML safely: no aliases, no Python objects, bounded nesting; ConfigError otherwise."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{source}: not valid YAML ({first[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None,
                check_files: bool = True) -> Config:
    """Read and validate a YAML settings file (paths in it are relative to the working directory)."""

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = read_limited(path, MAX_SETTINGS_BYTES, "config file").decode("utf-8")
    except FileReadError as exc:
        raise ConfigError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid YAML (not UTF-8 text at byte {exc.start})") from None
    raw = read_settings_yaml(text, str(path)) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return config_from_dict({**raw, **(overrides or {})}, source=str(path), check_files=check_files)


def save_config(config: Config, path: str | os.PathLike) -> None:

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=True))
