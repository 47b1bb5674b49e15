"""ONNX export of a model folder: ``pix2tex export --onnx DIR [--checkpoint MODEL]``.

Writes the three graphs described in :mod:`pix2tex.onnx_engine` (encoder, cross-attention cache,
one cached decoder step) plus ``config.yaml``, ``tokenizer.json`` and ``meta.json``, so DIR is
self-contained.  The graphs are traced from the model's own modules with PyTorch's TorchScript
exporter (``dynamo=False``): it needs nothing beyond torch and onnx, takes under a second, and
keeps batch, image height/width, memory length and cache length dynamic.  (The dynamo exporter
needs the extra ``onnxscript`` package and took minutes for the encoder.)

x-transformers keeps its key/value cache in a ``LayerIntermediates`` object; the export-only
wrappers here turn it into plain tensors and back, so the decoder graph is exactly
:meth:`TextDecoder.step` with tensors in and out.

Every export is checked before it is kept: ``onnx.checker`` on each graph, then onnxruntime
against PyTorch on inputs of other sizes than the traced ones (batch 1 and 3, largest image,
several cached steps).  DIR appears only complete: the export is built in a temporary folder
beside it and renamed into place.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import shutil
import sys
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from x_transformers.x_transformers import Attention, Intermediates, LayerIntermediates

from pix2tex.checkpoint import CONFIG, META, TOKENIZER, load_model_folder, resolve_model_folder
from pix2tex.config import ModelConfig
from pix2tex.fileio import replace_folder
from pix2tex.models.transformer import TextDecoder
from pix2tex.models.utils import Model
from pix2tex.onnx_engine import (CROSS, CROSS_CACHE, DECODER, ENCODER, FORMAT, FORMAT_VERSION, MANIFEST, SELF,
                                 cache_names, make_session)
from pix2tex.tokenizer import BOS_ID

__all__ = ["ExportError", "OPSET", "TOLERANCE", "export_onnx", "export_model", "main"]

OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.13 runs it
TOLERANCE = 1e-3  # largest accepted |onnxruntime - PyTorch|, relative to max(1, largest |PyTorch| value)


class ExportError(ValueError):
    """The export could not be made or does not reproduce PyTorch; the message is one line."""


# -- export-only wrappers -------------------------------------------------------------------------------

class _SplitHeads(nn.Module):
    """``[B, n, h*d] -> [B, h, n, d]`` with h and d both fixed.

    x-transformers' einops ``Rearrange`` leaves h to be inferred (-1 in the ONNX Reshape), which
    onnxruntime cannot do for the zero-length context a cached cross-attention step projects.
    """

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)


def exportable_decoder(decoder: TextDecoder) -> TextDecoder:
    """A copy of ``decoder`` (same weights) whose key/value head splits export to fixed-size reshapes."""
    decoder = copy.deepcopy(decoder)
    for module in decoder.modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if isinstance(module, Attention) and isinstance(to_k, nn.Linear) and isinstance(to_v, nn.Linear):
            heads = module.kv_heads
            module.split_k_heads = _SplitHeads(heads, to_k.out_features // heads)
            module.split_v_heads = _SplitHeads(heads, to_v.out_features // heads)
    return decoder


def cache_layout(decoder: TextDecoder, memory: Tensor) -> list[str]:
    """Kind ("self"/"cross") of each attention layer, in the order of the decoder's cache."""
    with torch.no_grad():
        _, cache = decoder.step(torch.full((memory.shape[0], 1), BOS_ID), memory, None)
    return [SELF if inter.layer_type == "a" else CROSS for inter in cache.attn_intermediates]


class CrossCacheGraph(nn.Module):
    """memory [B, N, dim] -> each cross-attention layer's keys and values (computed once per image).

    It is the first decoder step with only the cross-attention cache kept as output; the export
    drops everything that does not lead to it (embeddings, self-attention, logits).
    """

    def __init__(self, decoder: TextDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, memory: Tensor) -> tuple[Tensor, ...]:
        bos = torch.full((memory.shape[0], 1), BOS_ID, dtype=torch.long)
        _, cache = self.decoder.step(bos, memory, None)
        return tuple(t for inter in cache.attn_intermediates if inter.layer_type == "c" for t in inter.cached_kv)


class DecoderStepGraph(nn.Module):
    """One cached step: (tokens [B, 1], every attention layer's keys/values) -> (logits [B, V], new self-attention ones).

    The flat tensors are rebuilt into the ``LayerIntermediates`` that :meth:`TextDecoder.step`
    reads; the cache length (position of the new token) is the self-attention cache's length.
    With a cache, x-transformers attends to the cached cross-attention keys only and cuts the
    context to zero length, so an empty memory stands in for it.
    """

    def __init__(self, decoder: TextDecoder, layers: list[str], dim: int):
        super().__init__()
        self.decoder, self.layers, self.dim = decoder, list(layers), dim
        self.first_self = self.layers.index(SELF)

    def forward(self, tokens: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        inters = [Intermediates(cached_kv=(past[2 * j], past[2 * j + 1]), layer_type="a" if kind == SELF else "c")
                  for j, kind in enumerate(self.layers)]
        cache = LayerIntermediates(attn_intermediates=inters, cache_length=past[2 * self.first_self].shape[2])
        no_memory = torch.zeros(tokens.shape[0], 0, self.dim, dtype=past[0].dtype)
        logits, cache = self.decoder.step(tokens, no_memory, cache)
        present = (t for kind, inter in zip(self.layers, cache.attn_intermediates) if kind == SELF
                   for t in inter.cached_kv)
        return (logits, *present)


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
    except Exception as exc:  # the tracer raises many kinds on unsupported modules
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path.name}: torch.onnx.export failed ({type(exc).__name__}: {first})") from None


def _example_images(cfg: ModelConfig, batch: int, height: int, width: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.channels, height, width, generator=generator)


def write_graphs(model: Model, folder: Path) -> list[str]:
    """Trace encoder, cross cache and decoder step into ``folder``; returns the cache layout."""
    cfg, patch = model.cfg, model.cfg.patch_size
    images = _example_images(cfg, 2, min(2 * patch, cfg.max_height), min(4 * patch, cfg.max_width), seed=0)
    _trace(model.encoder, (images,), folder / ENCODER, ["images"], ["memory"],
           {"images": {0: "batch", 2: "height", 3: "width"}, "memory": {0: "batch", 1: "memory_length"}})
    with torch.no_grad():
        memory = model.encode(images)
    decoder = exportable_decoder(model.decoder).eval()
    layers = cache_layout(decoder, memory)
    if SELF not in layers:
        raise ExportError("the decoder has no self-attention layer to cache")

    past = [n for j in range(len(layers)) for n in cache_names("past", j)]
    cross = [n for j, kind in enumerate(layers) if kind == CROSS for n in cache_names("past", j)]
    present = [n for j, kind in enumerate(layers) if kind == SELF for n in cache_names("present", j)]
    cross_axes = {n: {0: "batch", 2: "memory_length"} for n in cross}
    _trace(CrossCacheGraph(decoder), (memory,), folder / CROSS_CACHE, ["memory"], cross,
           {"memory": {0: "batch", 1: "memory_length"}, **cross_axes})

    # Trace the step at cache length 2 so no size-1 dimension gets folded into the graph.
    with torch.no_grad():
        _, cache = decoder.step(torch.full((2, 1), BOS_ID), memory, None)
        _, cache = decoder.step(torch.full((2, 1), min(BOS_ID + 3, cfg.num_tokens - 1)), memory, cache)
    flat = tuple(t for inter in cache.attn_intermediates for t in inter.cached_kv)
    tokens = torch.full((2, 1), min(BOS_ID + 5, cfg.num_tokens - 1), dtype=torch.long)
    axes = {"tokens": {0: "batch"}, "logits": {0: "batch"}, **cross_axes,
            **{n: {0: "batch", 2: "cache_length"} for j, kind in enumerate(layers) if kind == SELF
               for n in cache_names("past", j)},
            **{n: {0: "batch", 2: "new_cache_length"} for n in present}}
    _trace(DecoderStepGraph(decoder, layers, cfg.dim), (tokens, *flat), folder / DECODER, ["tokens", *past],
           ["logits", *present], axes)
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

    # Decode a few steps of random tokens from the last (batch-3) memory: PyTorch's own first step
    # (no cache) against cross_cache.onnx + decoder.onnx with empty self-attention caches, then cached steps.
    generator = torch.Generator().manual_seed(1)
    tokens = torch.full((memory.shape[0], 1), BOS_ID, dtype=torch.long)
    with torch.no_grad():
        logits, cache = model.decoder.step(tokens, memory, None)
    cross_names = [n for j, kind in enumerate(layers) if kind == CROSS for n in cache_names("past", j)]
    feeds = dict(zip(cross_names, sessions[CROSS_CACHE].run(cross_names, {"memory": memory.numpy()})))
    for j, (kind, inter) in enumerate(zip(layers, cache.attn_intermediates)):
        for name, reference in zip(cache_names("past", j), inter.cached_kv):
            if kind == CROSS:
                diffs[CROSS_CACHE] = max(diffs[CROSS_CACHE], _diff(f"{CROSS_CACHE} {name}", feeds[name], reference))
            else:
                feeds[name] = np.zeros(tuple(reference[:, :, :0].shape), np.float32)
    for step in range(steps):
        feeds["tokens"] = tokens.numpy()
        ours, *present = sessions[DECODER].run(None, feeds)
        diffs[DECODER] = max(diffs[DECODER], _diff(f"{DECODER} logits at step {step}", ours, logits))
        present = iter(present)
        for j, (kind, inter) in enumerate(zip(layers, cache.attn_intermediates)):
            if kind == CROSS:
                continue
            for name, reference in zip(cache_names("past", j), inter.cached_kv):
                feeds[name] = next(present)
                diffs[DECODER] = max(diffs[DECODER], _diff(f"{DECODER} {name} at step {step}", feeds[name], reference))
        tokens = torch.randint(0, cfg.num_tokens, (memory.shape[0], 1), generator=generator)
        with torch.no_grad():
            logits, cache = model.decoder.step(tokens, memory, cache)
    return diffs


# -- the export -----------------------------------------------------------------------------------------

def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier export (or an empty folder)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out}: exists and is not an ONNX export (no {MANIFEST}); choose another folder")


def export_model(model: Model, source: Path, out_dir: str | os.PathLike) -> Path:
    """Export ``model`` to ``out_dir``, copying config, tokenizer and meta from its model folder ``source``."""
    out = Path(out_dir)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.mkdir()  # not mkdtemp: the folder should get the usual permissions (umask), not 0700
    try:
        model = model.cpu().eval()
        layers = write_graphs(model, tmp)
        diffs = check_graphs(model, tmp, layers)
        for name in (CONFIG, TOKENIZER, META):
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "opset": OPSET, "layers": layers,
                    "max_abs_diff": {k: float(f"{v:.3g}") for k, v in diffs.items()},
                    "torch": torch.__version__, "source": str(source)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_onnx(model_folder: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path:
    """Export the model folder ``model_folder`` (None: the bundled model) to ONNX in ``out_dir``; returns it.

    Raises CheckpointError for an unloadable model folder and ExportError when the export fails
    or does not reproduce PyTorch (both ValueErrors with a one-line message).
    """
    source = resolve_model_folder(model_folder)
    model = load_model_folder(source)[0]
    return export_model(model, source, out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pix2tex export",
                                     description="Export a model folder to ONNX for `pix2tex predict --engine onnx`.")
    parser.add_argument("--onnx", required=True, metavar="DIR",
                        help="output folder (replaced if it holds an earlier export)")
    parser.add_argument("--checkpoint", metavar="MODEL", help="model folder (default: the bundled model)")
    args = parser.parse_args(argv)
    try:
        out = export_onnx(args.checkpoint, args.onnx)
    except (ValueError, OSError, ImportError) as exc:  # ExportError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    diffs = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["max_abs_diff"]
    print(f"exported {out} (max |onnxruntime - PyTorch|: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
