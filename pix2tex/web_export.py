"""The in-browser reader: ``pix2tex export --web DIR [--checkpoint MODEL]``.

DIR becomes a static site that reads formula images in the browser, so nothing leaves the reader's
machine: any static file server will do (``python -m http.server -d DIR``)::

    index.html, *.css, *.js       the page and its reader (pix2tex/web/reader, and input.js and base.css
                                  of pix2tex/web, which the server's page shares)
    reader.json                   every constant the page's preprocessing and decoding use, written
                                  here from the Python modules' own constants (one source of truth)
    model/                        the ONNX graphs (pix2tex.onnx_engine's layout) with onnx.json,
                                  config.yaml, tokenizer.json and meta.json
    ort/                          onnxruntime-web's wasm build, from the npm package installed by
                                  ``make web`` (``npm ci`` on the repository's package-lock.json)

The graphs are the model folder's own when it carries them, else ``pix2tex export --onnx``'s
(:func:`pix2tex.export.export_onnx`).  The page's JavaScript repeats ``preprocess.prepare``,
greedy decoding and ``LatexTokenizer.decode_latex`` step for step (tests compare its tokens with the
onnx engine's on real images).  DIR appears only complete: it is built in a temporary folder
beside it and renamed into place, and only an earlier web export is ever replaced.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pix2tex import decoding_rules, normalize, preprocess
from pix2tex.config import ModelConfig
from pix2tex.fileio import atomic_folder
from pix2tex.model_folder import (
    CONFIG,
    META,
    ONNX_MANIFEST,
    TOKENIZER,
    glyph_estimator,
    glyph_scale,
    read_folder_files,
    resolve_model_folder,
)
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["WEB_FORMAT", "WEB_VERSION", "WEB_MANIFEST", "ORT_FILES", "WebExportError", "find_onnxruntime_web",
           "reader_settings", "check_web_export", "export_web"]

WEB_FORMAT, WEB_VERSION = "pix2tex-web", 1  # reader.js checks both
WEB_MANIFEST = "reader.json"  # the mark of a web export, and the page's settings
ASSETS = Path(__file__).resolve().parent / "web" / "reader"
SHARED_ASSETS = tuple(ASSETS.parent / name for name in ("input.js", "base.css"))  # the server's page uses them too
MODEL_DIR, ORT_DIR = "model", "ort"
ORT_PACKAGE = "onnxruntime-web"
# The wasm build of onnxruntime-web: its ES module, the Emscripten loader it imports, the binary.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
REPOSITORY = Path(__file__).resolve().parents[1]


class WebExportError(ValueError):
    """The web export cannot be made; the message is one line."""


def _ort_candidates() -> list[Path]:
    """Where ``npm ci`` puts onnxruntime-web: the repository's node_modules, or the current folder's."""
    return [base / "node_modules" / ORT_PACKAGE / "dist" for base in dict.fromkeys((REPOSITORY, Path.cwd()))]


def find_onnxruntime_web(ort_dir: str | os.PathLike | None = None) -> Path:
    """The folder with onnxruntime-web's wasm files (``ort_dir``, else node_modules); WebExportError if none."""
    candidates = [Path(ort_dir)] if ort_dir is not None else _ort_candidates()
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_FILES):
            return folder
    where = candidates[0] / ORT_FILES[-1]
    raise WebExportError(f"onnxruntime-web is not installed ({where} is missing): run `make web` (npm ci) in "
                         f"the pix2tex repository, or pass --ort-web DIR (a folder with {', '.join(ORT_FILES)})")


def _ort_version(ort_dir: Path) -> str | None:
    try:
        return json.loads((ort_dir.parent / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def _cubic_resize() -> str:
    """Which cv2.resize INTER_CUBIC this Python runs: Intel IPP's (opencv-python's x86-64 wheels)
    or OpenCV's own kernel; the two differ by a gray level on a few percent of the pixels."""
    import cv2

    return "ipp" if cv2.ipp.useIPP() else "opencv"


def reader_settings(cfg: ModelConfig, meta: dict[str, Any], layers: list[str],
                    self_cache_shapes: list[list[list[int]]]) -> dict[str, Any]:
    """reader.json: the constants of pix2tex.preprocess, the decoding rules, the special token ids
    and the model's sizes, read from the Python modules so the page cannot drift from them."""
    scale = glyph_scale(meta)
    return {
        "format": WEB_FORMAT, "version": WEB_VERSION,
        "model": {"patch_size": cfg.patch_size, "max_height": cfg.max_height, "max_width": cfg.max_width,
                  "max_seq_len": cfg.max_seq_len, "num_tokens": cfg.num_tokens, "channels": cfg.channels},
        "glyph_scale": scale,
        "glyph_estimator": glyph_estimator(meta),
        "target_glyph_height": preprocess.DEFAULT_GLYPH_HEIGHT * scale,  # as LatexOCR computes it
        "preprocess": {
            "mean": preprocess.MEAN, "std": preprocess.STD, "margin": preprocess.MARGIN,
            "default_glyph_height": preprocess.DEFAULT_GLYPH_HEIGHT,
            "min_contrast": preprocess._MIN_CONTRAST, "ink_level": preprocess._INK_LEVEL,
            "max_upscale": preprocess._MAX_UPSCALE, "max_analysis_pixels": preprocess._MAX_ANALYSIS_PIXELS,
            "height_band": list(preprocess._HEIGHT_BAND), "stroke_work_height": preprocess._STROKE_WORK_HEIGHT,
            "stroke_max_upsample": preprocess._STROKE_MAX_UPSAMPLE,
            "stroke_calibration": preprocess._STROKE_CALIBRATION, "vote_cap": preprocess._VOTE_CAP,
            "max_pixels": preprocess.MAX_PIXELS, "max_work_pixels": preprocess.MAX_WORK_PIXELS,
            "max_file_bytes": preprocess.MAX_FILE_BYTES, "cubic_resize": _cubic_resize(),
        },
        "tokens": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID},
        "decoding": {
            "loop_period": decoding_rules.LOOP_PERIOD, "loop_min_copies": decoding_rules.LOOP_MIN_COPIES,
            "loop_min_tokens": decoding_rules.LOOP_MIN_TOKENS,
            "cut_loop_min_copies": inspect.signature(decoding_rules.cut_loop).parameters["min_copies"].default,
        },
        "latex": {"max_group_depth": normalize.MAX_GROUP_DEPTH},
        "onnx": {"layers": layers, "self_cache_shapes": self_cache_shapes,
                 "graphs": {"encoder": f"{MODEL_DIR}/encoder.onnx", "cross_cache": f"{MODEL_DIR}/cross_cache.onnx",
                            "decoder": f"{MODEL_DIR}/decoder.onnx"}},
        "tokenizer": f"{MODEL_DIR}/{TOKENIZER}",
    }


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """reader.json of a web export, or None when ``folder`` holds none."""
    try:
        manifest = json.loads((folder / WEB_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == WEB_FORMAT else None


def check_web_export(folder: str | os.PathLike) -> Path:
    """``folder`` if it holds a web export of this version (what ``pix2tex serve --web DIR``
    mounts); WebExportError otherwise."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is None:
        raise WebExportError(f"{folder}: not a web export (no {WEB_MANIFEST}); write one with "
                             f"`pix2tex export --web {folder}`")
    if manifest.get("version") != WEB_VERSION:
        raise WebExportError(f"{folder}: a web export of version {manifest.get('version')}, this pix2tex reads "
                             f"version {WEB_VERSION}: export it again")
    return folder


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier web export (or an empty folder)."""
    if out.exists() and not out.is_dir():
        raise WebExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and _read_manifest(out) is None:
        raise WebExportError(f"{out}: exists and is not a web export (no {WEB_MANIFEST}); choose another folder")


def _check_tokenizer(folder: Path) -> None:
    """The page decodes word-level and Metaspace BPE tokenizers (this project's two kinds) only."""
    data = json.loads((folder / TOKENIZER).read_text(encoding="utf-8"))
    model, decoder = data.get("model", {}).get("type"), (data.get("decoder") or {}).get("type")
    if model not in ("WordLevel", "BPE") or decoder not in (None, "Metaspace"):
        raise WebExportError(f"{folder / TOKENIZER}: the browser decodes WordLevel or Metaspace BPE tokenizers, "
                             f"not {model} with decoder {decoder}")


def _write_model(model_folder: str | os.PathLike | None, dest: Path, *, fp16: bool) -> None:
    """The ONNX graphs and folder files into ``dest``: the model folder's own graphs where it has
    them, else a fresh ``export --onnx`` (which needs torch)."""
    from pix2tex.onnx_engine import GRAPHS, has_onnx_graphs

    if has_onnx_graphs(model_folder) and not fp16:
        source = resolve_model_folder(model_folder, needs=ONNX_MANIFEST)
        dest.mkdir()
        for name in (*GRAPHS, ONNX_MANIFEST, CONFIG, TOKENIZER, META):
            if (source / name).is_file():
                shutil.copyfile(source / name, dest / name)
        return
    try:
        from pix2tex.export import export_onnx
    except ImportError as exc:
        raise WebExportError(f"this model folder has no ONNX graphs and exporting them needs {exc.name}: "
                             "pip install 'pix2tex[train]'") from None
    export_onnx(model_folder, dest, fp16=fp16)


def _self_cache_shapes(folder: Path, layers: list[str]) -> list[list[list[int]]]:
    """[[heads, width] of the key, [heads, width] of the value] of each self-attention cache: static
    dimensions of decoder.onnx's past inputs, which the page's empty first-step caches need."""
    from pix2tex.onnx_engine import DECODER, SELF, cache_names, make_session

    inputs = {i.name: i.shape for i in make_session(folder / DECODER, 1).get_inputs()}
    return [[[int(inputs[name][1]), int(inputs[name][3])] for name in cache_names("past", j)]
            for j, kind in enumerate(layers) if kind == SELF]


def export_web(model_folder: str | os.PathLike | None, out_dir: str | os.PathLike, *,
               ort_dir: str | os.PathLike | None = None, fp16: bool = False) -> Path:
    """Write the in-browser reader for ``model_folder`` (None: the bundled model) to ``out_dir``.

    Raises WebExportError (onnxruntime-web missing, a folder that is not an earlier web export),
    CheckpointError or ExportError, all ValueErrors with a one-line message, before DIR changes.
    """
    from pix2tex.onnx_engine import read_manifest

    ort = find_onnxruntime_web(ort_dir)  # first: a missing runtime must not cost a model export
    out = Path(out_dir)
    _check_target(out)
    with atomic_folder(out) as tmp:
        for asset in [*sorted(p for p in ASSETS.iterdir() if p.is_file()), *SHARED_ASSETS]:
            shutil.copyfile(asset, tmp / asset.name)
        (tmp / ORT_DIR).mkdir()
        for name in ORT_FILES:
            shutil.copyfile(ort / name, tmp / ORT_DIR / name)
        model = tmp / MODEL_DIR
        _write_model(model_folder, model, fp16=fp16)
        _check_tokenizer(model)
        layers = read_manifest(model)["layers"]
        cfg, _, meta = read_folder_files(model, "ONNX model folder")
        settings = reader_settings(cfg, meta, layers, _self_cache_shapes(model, layers))
        settings["onnxruntime_web"] = _ort_version(ort)
        (tmp / WEB_MANIFEST).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return out
