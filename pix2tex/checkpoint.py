"""Checkpoints: model folders for prediction and resume states for training.

A *model folder* is what ``pix2tex predict`` and :class:`pix2tex.LatexOCR` load::

    model.safetensors   weights (safetensors: loading can never run code)
    config.yaml         the resolved ModelConfig
    tokenizer.json      the tokenizer the model was trained with
    meta.json           step, validation scores (informative); ``glyph_scale``, the glyph size
                        this model reads best at, times DEFAULT_GLYPH_HEIGHT (default 1);
                        ``glyph_estimator``, how input glyphs are measured (default "soft", see
                        pix2tex.preprocess.GLYPH_ESTIMATORS)

A *resume state* (``last.pt``) holds everything ``--resume`` needs: model, optimizer, scheduler,
step, epoch, position in the epoch, RNG states, best score and the resolved config.  It is read
with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.

Every write is atomic: a file is written next to its target and renamed over it; a folder is
built beside the old one and swapped in with two renames, and the loader falls back to the old
folder if a crash hit between them.  A ``kill -9`` at any moment leaves a loadable checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pix2tex.config import (
    MAX_SETTINGS_BYTES,
    ConfigError,
    ModelConfig,
    check_glyph_scale,
    config_from_dict,
    read_settings_yaml,
)
from pix2tex.fileio import FileReadError, atomic_path, read_limited, replace_folder
from pix2tex.preprocess import GLYPH_ESTIMATORS
from pix2tex.preprocess import check_glyph_estimator as _check_estimator
from pix2tex.tokenizer import LatexTokenizer, TokenizerError

__all__ = [
    "CheckpointError", "save_model_folder", "load_model_folder", "resolve_model_folder",
    "save_resume_state", "load_resume_state", "default_model_folder", "read_folder_files", "glyph_scale",
    "glyph_estimator", "check_glyph_estimator",
]

WEIGHTS, CONFIG, TOKENIZER, META = "model.safetensors", "config.yaml", "tokenizer.json", "meta.json"
MAX_TOKENIZER_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or not one of ours; the message names the path."""


def default_model_folder() -> Path:
    """The model bundled with the package."""
    return Path(__file__).resolve().parent / "model" / "checkpoints" / "default"


# -- model folders -------------------------------------------------------------------------------------
def save_model_folder(folder: str | os.PathLike, model: torch.nn.Module, config: ModelConfig,
                      tokenizer: LatexTokenizer, meta: dict[str, Any] | None = None,
                      dtype: torch.dtype | None = None) -> None:
    """Write a complete model folder, replacing ``folder`` atomically.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights at lower precision, which
    halves the size of the bundled model; loading casts them back to float32.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared and shipped
    try:
        state = {}
        for k, v in model.state_dict().items():
            v = v.detach().cpu()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            state[k] = v.contiguous()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=True), encoding="utf-8")
        (tmp / TOKENIZER).write_text(tokenizer.to_str(), encoding="utf-8")
        (tmp / META).write_text(json.dumps(meta or {}, indent=1, sort_keys=True), encoding="utf-8")
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model_folder(path: str | os.PathLike | None) -> Path:
    """The folder to load for ``path`` (None: the bundled model); handles an interrupted swap."""
    folder = default_model_folder() if path is None else Path(path)
    if folder.is_file() and folder.name == WEIGHTS:
        folder = folder.parent
    if not (folder / WEIGHTS).is_file():
        old = folder.with_name(folder.name + ".old")
        if (old / WEIGHTS).is_file():
            return old
        if path is None:
            raise CheckpointError(f"{folder}: the bundled model is missing from this installation")
        raise CheckpointError(f"{folder}: not a model folder (no {WEIGHTS})")
    return folder


def load_model_folder(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Load (model, ModelConfig, LatexTokenizer, meta) from a model folder; the model is in eval mode."""
    from pix2tex.models.model import get_model  # imported here: checkpoint.py stays light to import

    folder = resolve_model_folder(path)
    config, tokenizer, meta = read_folder_files(folder)
    try:
        state = load_file(str(folder / WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({exc})") from None
    # Built on the meta device and given the loaded tensors (assign=True): no random initialisation
    # that would be overwritten at once (faster, and no second float32 copy of the weights).
    with torch.device("meta"):
        model = get_model(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shape mismatch")
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the config ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the config "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return model.to(device).eval(), config, tokenizer, meta


def read_folder_files(folder: Path, kind: str = "model folder") -> tuple[ModelConfig, LatexTokenizer, dict[str, Any]]:
    """The config, tokenizer and meta that every model folder (and ONNX export) carries."""
    for name in (CONFIG, TOKENIZER):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete {kind} (no {name})")
    try:
        text = read_limited(folder / CONFIG, MAX_SETTINGS_BYTES, "config file").decode("utf-8")
        raw = read_settings_yaml(text, str(folder / CONFIG))
        config = config_from_dict(raw, source=str(folder / CONFIG), check_files=False).model
        read_limited(folder / TOKENIZER, MAX_TOKENIZER_BYTES, "tokenizer file")  # size check before parsing
        tokenizer = LatexTokenizer.load(folder / TOKENIZER)
        meta_path = folder / META
        meta = json.loads(read_limited(meta_path, MAX_SETTINGS_BYTES, "meta file")) if meta_path.is_file() else {}
        if not isinstance(meta, dict):
            raise CheckpointError(f"{meta_path}: must hold a JSON object")
        glyph_scale(meta, str(meta_path))
        glyph_estimator(meta, str(meta_path))
    except (ConfigError, TokenizerError, FileReadError) as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder}: unreadable {META} or {CONFIG} ({type(exc).__name__})") from None
    except RecursionError:
        raise CheckpointError(f"{folder}: {META} nested too deeply") from None
    return config, tokenizer, meta


def glyph_scale(meta: dict[str, Any], source: str | None = META) -> float:
    """The glyph size a model reads best at, as a multiple of ``DEFAULT_GLYPH_HEIGHT`` (meta.json's
    ``glyph_scale``, 1 when absent). Training writes the size it trained at (its config key
    ``glyph_scale``); ``benchmarks.glyph_scale`` chooses a better one on validation renders.
    A value out of range is :func:`pix2tex.config.check_glyph_scale`'s ConfigError (reading a
    folder turns it into a CheckpointError that names the folder)."""
    return check_glyph_scale(meta.get("glyph_scale", 1.0), source)


def glyph_estimator(meta: dict[str, Any], source: str | None = META) -> str:
    """How a model measures the glyphs of the images it reads (meta.json's ``glyph_estimator``,
    "soft" when absent: the estimator every model before it was trained and read with)."""
    return check_glyph_estimator(meta.get("glyph_estimator", "soft"), source)


def check_glyph_estimator(value: Any, source: str | None = None) -> str:
    """``value`` as a glyph estimator name; CheckpointError unless it is one of GLYPH_ESTIMATORS."""
    try:
        return _check_estimator(value)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}" if source else str(exc)) from None


def average_folders(paths: Sequence[str | os.PathLike]):
    """(model, config, tokenizer, meta) whose weights are the mean of the model folders' weights.

    The folders must share model settings and tokenizer (steps of one run).  meta is the last
    folder's, with ``averaged_steps`` listing the folders' steps and without the validation scores
    of the last one alone."""
    model, config, tokenizer, meta = load_model_folder(paths[-1])
    states, steps = [], []
    for path in paths[:-1]:
        other, other_config, other_tokenizer, other_meta = load_model_folder(path)
        if other_config != config or other_tokenizer.to_str() != tokenizer.to_str():
            raise CheckpointError(f"{path}: model settings or tokenizer differ from {paths[-1]}; "
                                  "only steps of one run can be averaged")
        states.append(other.state_dict())
        steps.append(other_meta.get("step"))
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.stack([value, *(s[key] for s in states)]).mean(0))
    meta = {k: v for k, v in meta.items() if k != "val"} | {"averaged_steps": [*steps, meta.get("step")]}
    return model, config, tokenizer, meta


# -- resume states -------------------------------------------------------------------------------------
def save_resume_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a resume state atomically (tensors and plain containers only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _check_archive(path: Path) -> None:
    """A resume state is a zip that torch writes uncompressed; refuse one whose members would
    inflate (a 2 MB file whose data.pkl expands to gigabytes) or that is not a regular file."""

    if not stat.S_ISREG(path.stat().st_mode):
        raise CheckpointError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a loadable resume state ({type(exc).__name__})") from None
    size = path.stat().st_size
    total = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or total > size:
        raise CheckpointError(f"{path}: archive members would expand to {total:,} bytes from {size:,}; "
                              "refusing a compressed resume state")


def load_resume_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resume state safely: ``weights_only`` refuses arbitrary pickled objects, and the
    archive's member sizes are checked before anything is read (see :func:`_check_archive`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state to continue from")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable resume state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != "pix2tex-resume":
        raise CheckpointError(f"{path}: not a pix2tex resume state")
    return state


def main(argv: list[str] | None = None) -> int:
    """``python -m pix2tex.checkpoint SRC DST [--average FOLDER ...] [--fp16] [--glyph-scale F]
    [--glyph-estimator NAME]``: copy a model folder, optionally averaged with other steps of its run
    and in half precision, with the glyph size it reads best at and the way it measures glyphs (how
    the bundled model is made from a training run's model folders)."""

    parser = argparse.ArgumentParser(prog="python -m pix2tex.checkpoint", description=main.__doc__)
    parser.add_argument("src", help="model folder, e.g. checkpoints/default/best")
    parser.add_argument("dst", help="target folder, e.g. pix2tex/model/checkpoints/default")
    parser.add_argument("--average", action="append", default=[], metavar="FOLDER",
                        help="average SRC's weights with this model folder's (another step of the same "
                             "run; repeatable); meta.json lists the steps")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    parser.add_argument("--glyph-scale", type=float, metavar="F",
                        help="glyph size to read at, times the default training size "
                             "(python -m benchmarks.glyph_scale)")
    parser.add_argument("--glyph-estimator", choices=GLYPH_ESTIMATORS,
                        help="how input glyphs are measured (pix2tex.preprocess.GLYPH_ESTIMATORS)")
    args = parser.parse_args(argv)
    try:
        if args.average:
            model, config, tokenizer, meta = average_folders([*args.average, args.src])
        else:
            model, config, tokenizer, meta = load_model_folder(args.src)
        if args.glyph_scale is not None:
            meta = {**meta, "glyph_scale": check_glyph_scale(args.glyph_scale, "--glyph-scale")}
        if args.glyph_estimator is not None:
            meta = {**meta, "glyph_estimator": args.glyph_estimator}
    except (CheckpointError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    save_model_folder(args.dst, model, config, tokenizer, meta, dtype=torch.float16 if args.fp16 else None)
    size = sum(f.stat().st_size for f in Path(args.dst).iterdir())
    print(f"wrote {args.dst}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
