"""ONNX export of a model folder: ``pix2tex export --onnx DIR [--checkpoint MODEL]``.

Writes the three graphs described in :mod:`pix2tex.onnx_engine` (encoder, cross-attention cache,
one cached decoder step) plus ``config.yaml``, ``tokenizer.json`` and ``meta.json``, so DIR is
self-contained.  The graphs are traced from the model's own modules with PyTorch's TorchScript
exporter (``dynamo=False``): it needs nothing beyond torch and onnx, takes under a second, and
keeps batch, image height/width, memory length and cache length dynamic.  (The dynamo exporter
needs the extra ``onnxscript`` package and took minutes for the encoder.)

The decoder graphs are traced from the lean decoder step that PyTorch decoding runs
(:class:`pix2tex.models.steps.LeanStep`, with the past concatenated instead of written into a
buffer), and checked against that step: the arithmetic that is checked is the arithmetic that
ships.  A decoder the lean step does not cover cannot be exported.

Every export is checked before it is kept: ``onnx.checker`` on each graph, then onnxruntime
against PyTorch on inputs of other sizes than the traced ones (batch 1 and 3, largest image,
several cached steps).  DIR appears only complete: the export is built in a temporary folder
beside it and renamed into place.

``--fp16`` stores the weights as float16 (half the size) with a Cast to float32 in front of each,
which onnxruntime folds away when it loads the graph: the arithmetic stays float32.  The model's
weights are rounded to float16 first and the check runs against the rounded model, so the graphs
compute what a model folder saved with ``--fp16`` computes in PyTorch.  The bundled model carries
its graphs so (``python -m pix2tex.checkpoint SRC DST --fp16 --onnx``), beside the same weights in
safetensors for the torch engine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pix2tex.checkpoint import CONFIG, META, TOKENIZER, load_model_folder, resolve_model_folder
from pix2tex.config import ModelConfig
from pix2tex.fileio import atomic_folder
from pix2tex.models.decoding import FlatCache
from pix2tex.models.model import Model
from pix2tex.models.steps import LeanCrossGraph, LeanStep, LeanStepGraph
from pix2tex.onnx_engine import (
    CROSS,
    CROSS_CACHE,
    DECODER,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SELF,
    cache_names,
    make_session,
)
from pix2tex.tokenizer import BOS_ID

__all__ = ["ExportError", "OPSET", "TOLERANCE", "export_onnx", "export_model", "write_onnx_files", "main"]

OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.13 runs it
TOLERANCE = 1e-3  # largest accepted |onnxruntime - PyTorch|, relative to max(1, largest |PyTorch| value)


class ExportError(ValueError):
    """The export could not be made or does not reproduce PyTorch; the message is one line."""


# -- tracing --------------------------------------------------------------------------------------------

# torch >= 2.5 has both exporters (dynamo by default from 2.9); older versions only the TorchScript one.
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _trace(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
           axes: dict[str, dict[int, str]]) -> None:
    """torch.onnx.export (TorchScript tracer) with dynamic axes; ExportError (one line) if it fails."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # Tracer notes about Python-side shape checks and the exporter's deprecation notice:
            # the numerical check after export is what tells whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), opset_version=OPSET, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, do_constant_folding=True, **_TORCHSCRIPT_EXPORTER)
    except Exception as exc:  # noqa: BLE001 - the tracer raises many kinds on unsupported modules
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path.name}: torch.onnx.export failed ({type(exc).__name__}: {first})") from None


def _example_images(cfg: ModelConfig, batch: int, height: int, width: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.channels, height, width, generator=generator)


def _lean_step(model: Model, memory: Tensor) -> LeanStep:
    step = model.decoder.decoding_step(memory)
    if not isinstance(step, LeanStep):
        raise ExportError("the decoder uses options the lean step does not implement, and only the lean step "
                          "is exported (see pix2tex/models/steps.py)")
    return step


def _past_in_layer_order(layers: list[str], cache: FlatCache) -> list[tuple[Tensor, Tensor]]:
    """The cache's keys/values of every attention layer in layer order (self-attention ones cut to its length)."""
    self_kv = iter((k[:, :, : cache.length], v[:, :, : cache.length]) for k, v in cache.self_kv)
    cross_kv = iter(cache.cross_kv)
    return [next(self_kv) if kind == SELF else next(cross_kv) for kind in layers]


def write_graphs(model: Model, folder: Path) -> list[str]:
    """Trace encoder, cross cache and decoder step into ``folder``; returns the cache layout."""
    cfg, patch = model.cfg, model.cfg.patch_size
    images = _example_images(cfg, 2, min(2 * patch, cfg.max_height), min(4 * patch, cfg.max_width), seed=0)
    _trace(model.encoder, (images,), folder / ENCODER, ["images"], ["memory"],
           {"images": {0: "batch", 2: "height", 3: "width"}, "memory": {0: "batch", 1: "memory_length"}})
    with torch.no_grad():
        memory = model.encode(images)
    lean = _lean_step(model, memory)
    layers = lean.kinds
    if SELF not in layers:
        raise ExportError("the decoder has no self-attention layer to cache")

    past = [n for j in range(len(layers)) for n in cache_names("past", j)]
    cross = [n for j, kind in enumerate(layers) if kind == CROSS for n in cache_names("past", j)]
    present = [n for j, kind in enumerate(layers) if kind == SELF for n in cache_names("present", j)]
    cross_axes = {n: {0: "batch", 2: "memory_length"} for n in cross}
    _trace(LeanCrossGraph(lean), (memory,), folder / CROSS_CACHE, ["memory"], cross,
           {"memory": {0: "batch", 1: "memory_length"}, **cross_axes})

    # Trace the step at cache length 2 so no size-1 dimension gets folded into the graph.
    with torch.no_grad():
        cache = lean.start(memory, None)
        lean(torch.full((2, 1), BOS_ID), cache)
        lean(torch.full((2, 1), min(BOS_ID + 3, cfg.num_tokens - 1)), cache)
    flat = tuple(t for kv in _past_in_layer_order(layers, cache) for t in kv)
    tokens = torch.full((2, 1), min(BOS_ID + 5, cfg.num_tokens - 1), dtype=torch.long)
    axes = {"tokens": {0: "batch"}, "logits": {0: "batch"}, **cross_axes,
            **{n: {0: "batch", 2: "cache_length"} for j, kind in enumerate(layers) if kind == SELF
               for n in cache_names("past", j)},
            **{n: {0: "batch", 2: "new_cache_length"} for n in present}}
    _trace(LeanStepGraph(lean), (tokens, *flat), folder / DECODER, ["tokens", *past], ["logits", *present], axes)
    return layers


# -- checking -------------------------------------------------------------------------------------------

def _diff(name: str, ours: np.ndarray, reference: Tensor) -> float:
    """Max |ours - reference|; ExportError when shapes differ or it exceeds the tolerance."""
    ref = reference.detach().numpy()
    if ours.shape != ref.shape:
        raise ExportError(f"{name}: onnxruntime gives shape {ours.shape}, PyTorch {ref.shape}")
    diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
    limit = TOLERANCE * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    if not diff <= limit:  # also catches NaN
        raise ExportError(f"{name}: onnxruntime differs from PyTorch by {diff:.3g} (tolerance {limit:.3g})")
    return diff


def check_graphs(model: Model, folder: Path, layers: list[str], steps: int = 4) -> dict[str, float]:
    """onnx.checker on each graph, then onnxruntime vs PyTorch on untraced sizes; max abs diff per graph."""
    try:
        import onnx  # an optional dependency, like onnxruntime
    except ImportError:
        raise ImportError("checking the export needs onnx and onnxruntime: pip install 'pix2tex[onnx]'") from None

    for name in (ENCODER, CROSS_CACHE, DECODER):
        try:
            onnx.checker.check_model(str(folder / name), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{name}: invalid ONNX graph ({first})") from None
    cfg = model.cfg
    threads = torch.get_num_threads()  # as many as PyTorch was given
    sessions = {name: make_session(folder / name, threads) for name in (ENCODER, CROSS_CACHE, DECODER)}
    diffs = {ENCODER: 0.0, CROSS_CACHE: 0.0, DECODER: 0.0}
    memory = None
    # Another batch size and image size than traced: the largest image alone, then three tiny ones
    # (whose memory feeds the decoder check below; the cost stays small even for big models).
    small = (3, cfg.patch_size, min(2 * cfg.patch_size, cfg.max_width))
    for batch, height, width in ((1, cfg.max_height, cfg.max_width), small):
        images = _example_images(cfg, batch, height, width, seed=batch)
        with torch.no_grad():
            memory = model.encode(images)
        (ours,) = sessions[ENCODER].run(None, {"images": images.numpy()})
        diffs[ENCODER] = max(diffs[ENCODER], _diff(f"{ENCODER} at {batch}x{height}x{width}", ours, memory))

    # Decode a few steps of random tokens from the last (batch-3) memory: the lean step that PyTorch
    # decoding runs against cross_cache.onnx + decoder.onnx from empty self-attention caches.
    generator = torch.Generator().manual_seed(1)
    tokens = torch.full((memory.shape[0], 1), BOS_ID, dtype=torch.long)
    lean = _lean_step(model, memory)
    with torch.no_grad():
        cache = lean.start(memory, None)
        logits = lean(tokens, cache)
    cross_names = [n for j, kind in enumerate(layers) if kind == CROSS for n in cache_names("past", j)]
    feeds = dict(zip(cross_names, sessions[CROSS_CACHE].run(cross_names, {"memory": memory.numpy()}), strict=True))
    for j, (kind, kv) in enumerate(zip(layers, _past_in_layer_order(layers, cache), strict=True)):
        for name, reference in zip(cache_names("past", j), kv, strict=True):
            if kind == CROSS:
                diffs[CROSS_CACHE] = max(diffs[CROSS_CACHE], _diff(f"{CROSS_CACHE} {name}", feeds[name], reference))
            else:
                feeds[name] = np.zeros(tuple(reference[:, :, :0].shape), np.float32)
    for step in range(steps):
        feeds["tokens"] = tokens.numpy()
        ours, *present = sessions[DECODER].run(None, feeds)
        diffs[DECODER] = max(diffs[DECODER], _diff(f"{DECODER} logits at step {step}", ours, logits))
        present = iter(present)
        for j, (kind, kv) in enumerate(zip(layers, _past_in_layer_order(layers, cache), strict=True)):
            if kind == CROSS:
                continue
            for name, reference in zip(cache_names("past", j), kv, strict=True):
                feeds[name] = next(present)
                diffs[DECODER] = max(diffs[DECODER], _diff(f"{DECODER} {name} at step {step}", feeds[name], reference))
        tokens = torch.randint(0, cfg.num_tokens, (memory.shape[0], 1), generator=generator)
        with torch.no_grad():
            logits = lean(tokens, cache)
    return diffs


# -- float16 weights ------------------------------------------------------------------------------------

HALF_MIN_ELEMENTS = 16  # smaller float initializers (scales, epsilons) stay float32: nothing to save


def round_weights_to_half(model: nn.Module) -> None:
    """Round every floating-point parameter and buffer to the nearest float16 value, in place."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def halve_initializers(path: Path) -> None:
    """Store the graph's float32 weights as float16, each behind a Cast back to float32.

    Only weights that float16 holds exactly are halved: after :func:`round_weights_to_half` that is
    every parameter, but the exporter's constant folding also makes new ones (a weight times a
    scale) that would round a second time, and those stay float32 (a few percent of the bytes).
    """
    import onnx  # an optional dependency, like onnxruntime (see check_graphs)
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    initializers, casts = [], []
    for init in graph.initializer:
        values = numpy_helper.to_array(init) if init.data_type == TensorProto.FLOAT else None
        if values is None or values.size < HALF_MIN_ELEMENTS or not np.array_equal(
                values.astype(np.float16).astype(np.float32), values):
            initializers.append(init)
            continue
        half = numpy_helper.from_array(values.astype(np.float16), f"{init.name}.fp16")
        initializers.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}.to_float"))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first: nodes stay in topological order
    onnx.save(graph_model, str(path))


def write_onnx_files(model: Model, folder: Path, source: Path | str, *, fp16: bool = False) -> dict[str, float]:
    """Write the three graphs and onnx.json into ``folder`` (an export, or a model folder being
    built), checked against PyTorch; returns the largest differences.  With ``fp16`` the model's
    weights are rounded to float16 in place first (see the module doc)."""
    model = model.cpu().eval()
    if fp16:
        round_weights_to_half(model)
    layers = write_graphs(model, folder)
    if fp16:
        for name in (ENCODER, CROSS_CACHE, DECODER):
            halve_initializers(folder / name)
    diffs = check_graphs(model, folder, layers)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "opset": OPSET, "layers": layers,
                "weights": "float16" if fp16 else "float32",
                "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
                "torch": torch.__version__, "source": str(source)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return diffs


# -- the export -----------------------------------------------------------------------------------------

def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier export (or an empty folder)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out}: exists and is not an ONNX export (no {MANIFEST}); choose another folder")


def export_model(model: Model, source: Path, out_dir: str | os.PathLike, *, fp16: bool = False) -> Path:
    """Export ``model`` to ``out_dir``, copying config, tokenizer and meta from its model folder ``source``."""
    out = Path(out_dir)
    _check_target(out)
    with atomic_folder(out) as tmp:
        write_onnx_files(model, tmp, source, fp16=fp16)
        for name in (CONFIG, TOKENIZER, META):
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
    return out


def export_onnx(model_folder: str | os.PathLike | None, out_dir: str | os.PathLike, *, fp16: bool = False) -> Path:
    """Export the model folder ``model_folder`` (None: the bundled model) to ONNX in ``out_dir``; returns it.

    Raises CheckpointError for an unloadable model folder and ExportError when the export fails
    or does not reproduce PyTorch (both ValueErrors with a one-line message).
    """
    source = resolve_model_folder(model_folder)
    model = load_model_folder(source)[0]
    return export_model(model, source, out_dir, fp16=fp16)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pix2tex export",
        description="Export a model folder to ONNX for `pix2tex predict --engine onnx`, or as a web page "
                    "that reads formulas in the browser.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", metavar="DIR", help="output folder (replaced if it holds an earlier export)")
    target.add_argument("--web", metavar="DIR",
                        help="a static site that reads images in the browser (replaced if it holds an earlier "
                             "web export); serve it with `python -m http.server -d DIR`")
    parser.add_argument("--checkpoint", metavar="MODEL", help="model folder (default: the bundled model)")
    parser.add_argument("--fp16", action="store_true",
                        help="store the weights as float16 (half the size; the arithmetic stays float32)")
    parser.add_argument("--ort-web", metavar="DIR",
                        help="with --web: onnxruntime-web's dist folder (default: node_modules from `make web`)")
    args = parser.parse_args(argv)
    if args.ort_web and not args.web:
        parser.error("--ort-web goes with --web")
    try:
        if args.web:
            from pix2tex.web_export import export_web

            out = export_web(args.checkpoint, args.web, ort_dir=args.ort_web, fp16=args.fp16)
        else:
            out = export_onnx(args.checkpoint, args.onnx, fp16=args.fp16)
    except (ValueError, OSError, ImportError) as exc:  # ExportError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.web:
        print(f"exported the in-browser reader to {out} (serve it with `python -m http.server -d {out}`)")
        return 0
    diffs = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["max_abs_diff"]
    print(f"exported {out} (max |onnxruntime - PyTorch|: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
