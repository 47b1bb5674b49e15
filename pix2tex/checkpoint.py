"""Checkpoints: model folders for prediction and resume states for training.

A *model folder* is what ``pix2tex predict`` and :class:`pix2tex.LatexOCR` load; its layout, and
the reading of the files every folder carries (config, tokenizer, meta), are in
:mod:`pix2tex.model_folder`, which needs no torch.  This module writes folders and loads their
weights.

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
import stat
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pix2tex.config import ConfigError, ModelConfig, check_glyph_scale
from pix2tex.fileio import atomic_folder, atomic_path
from pix2tex.model_folder import (  # re-exported: the names this module has always offered
    CONFIG,
    META,
    TOKENIZER,
    WEIGHTS,
    CheckpointError,
    check_glyph_estimator,
    default_model_folder,
    glyph_estimator,
    glyph_scale,
    read_folder_files,
    resolve_model_folder,
)
from pix2tex.preprocess import GLYPH_ESTIMATORS
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "CheckpointError", "save_model_folder", "load_model_folder", "resolve_model_folder",
    "save_resume_state", "load_resume_state", "default_model_folder", "read_folder_files", "glyph_scale",
    "glyph_estimator", "check_glyph_estimator", "WEIGHTS", "CONFIG", "TOKENIZER", "META",
]


# -- model folders -------------------------------------------------------------------------------------
def save_model_folder(folder: str | os.PathLike, model: torch.nn.Module, config: ModelConfig,
                      tokenizer: LatexTokenizer, meta: dict[str, Any] | None = None,
                      dtype: torch.dtype | None = None, extra: Callable[[Path], object] | None = None) -> None:
    """Write a complete model folder, replacing ``folder`` atomically.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point weights at lower precision, which
    halves the size of the bundled model; loading casts them back to float32.  ``extra`` writes
    more files into the folder before it replaces the old one (the bundled model's ONNX graphs).
    """
    with atomic_folder(folder) as tmp:
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
        if extra is not None:
            extra(tmp)


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
    """``python -m pix2tex.checkpoint SRC DST [--average FOLDER ...] [--fp16] [--onnx] [--glyph-scale F]
    [--glyph-estimator NAME]``: copy a model folder, optionally averaged with other steps of its run,
    in half precision and with its ONNX graphs beside the weights, with the glyph size it reads best
    at and the way it measures glyphs (how the bundled model is made from a training run's model
    folders)."""

    parser = argparse.ArgumentParser(prog="python -m pix2tex.checkpoint", description=main.__doc__)
    parser.add_argument("src", help="model folder, e.g. checkpoints/default/best")
    parser.add_argument("dst", help="target folder, e.g. pix2tex/model/checkpoints/default")
    parser.add_argument("--average", action="append", default=[], metavar="FOLDER",
                        help="average SRC's weights with this model folder's (another step of the same "
                             "run; repeatable); meta.json lists the steps")
    parser.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    parser.add_argument("--onnx", action="store_true",
                        help="also write the ONNX graphs the light install reads (checked against PyTorch)")
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
    extra = None
    if args.onnx:
        from pix2tex.export import write_onnx_files  # export imports this module

        def extra(folder: Path) -> None:
            write_onnx_files(model, folder, args.src, fp16=args.fp16)

    try:
        save_model_folder(args.dst, model, config, tokenizer, meta, dtype=torch.float16 if args.fp16 else None,
                          extra=extra)
    except (ValueError, ImportError) as exc:  # the export's ExportError; onnx missing
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in Path(args.dst).iterdir())
    print(f"wrote {args.dst}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
