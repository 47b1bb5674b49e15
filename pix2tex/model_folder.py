"""Model folders as reading needs them: their file names, their checks, and the files every folder
carries (config, tokenizer, meta), read without torch.

A *model folder* (see :mod:`pix2tex.checkpoint`, which writes and loads its weights) holds::

    model.safetensors   weights for the torch engine (written by pix2tex.checkpoint)
    encoder.onnx, cross_cache.onnx, decoder.onnx, onnx.json
                        the same weights as ONNX graphs for the onnxruntime engine (see
                        pix2tex.onnx_engine); the bundled model carries both forms, an export
                        (``pix2tex export --onnx DIR``) only the graphs
    config.yaml         the resolved ModelConfig
    tokenizer.json      the tokenizer the model was trained with
    meta.json           step, validation scores (informative); ``glyph_scale``, the glyph size
                        this model reads best at, times DEFAULT_GLYPH_HEIGHT (default 1);
                        ``glyph_estimator``, how input glyphs are measured (default "soft", see
                        pix2tex.preprocess.GLYPH_ESTIMATORS)

This module imports neither torch nor onnxruntime: the light install (``pip install pix2tex``)
reads model folders with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pix2tex.config import (
    MAX_SETTINGS_BYTES,
    ConfigError,
    ModelConfig,
    check_glyph_scale,
    config_from_dict,
    read_settings_yaml,
)
from pix2tex.fileio import FileReadError, read_limited
from pix2tex.preprocess import check_glyph_estimator as _check_estimator
from pix2tex.tokenizer import LatexTokenizer, TokenizerError

__all__ = [
    "WEIGHTS", "CONFIG", "TOKENIZER", "META", "ONNX_MANIFEST", "CheckpointError", "default_model_folder",
    "resolve_model_folder", "read_folder_files", "glyph_scale", "glyph_estimator", "check_glyph_estimator",
]

WEIGHTS, CONFIG, TOKENIZER, META = "model.safetensors", "config.yaml", "tokenizer.json", "meta.json"
ONNX_MANIFEST = "onnx.json"  # the mark of a folder the onnxruntime engine can read
MAX_TOKENIZER_BYTES = 64 * 2**20


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or not one of ours; the message names the path."""


def default_model_folder() -> Path:
    """The model bundled with the package."""
    return Path(__file__).resolve().parent / "model" / "checkpoints" / "default"


def resolve_model_folder(path: str | os.PathLike | None, needs: str = WEIGHTS) -> Path:
    """The folder to load for ``path`` (None: the bundled model) that holds the file ``needs``
    (the weights for the torch engine, the ONNX manifest for onnxruntime); handles an interrupted
    swap (pix2tex.fileio.replace_folder leaves the previous folder as ``NAME.old`` for a moment)."""
    folder = default_model_folder() if path is None else Path(path)
    if folder.is_file() and folder.name == needs:
        folder = folder.parent
    if not (folder / needs).is_file():
        old = folder.with_name(folder.name + ".old")
        if (old / needs).is_file():
            return old
        if path is None:
            raise CheckpointError(f"{folder}: the bundled model is missing from this installation (no {needs})")
        if needs == ONNX_MANIFEST:
            raise CheckpointError(f"{folder}: not an ONNX model folder (no {ONNX_MANIFEST}; create one with "
                                  f"`pix2tex export --onnx DIR`)")
        raise CheckpointError(f"{folder}: not a model folder (no {needs})")
    return folder


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
