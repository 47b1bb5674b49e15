"""Run an exported model (``pix2tex export --onnx DIR``) with onnxruntime on the CPU.

An ONNX model folder holds three graphs and what is needed to read their output::

    encoder.onnx       images [B, C, H, W] float -> memory [B, N, dim]          (H, W multiples of patch_size)
    cross_cache.onnx   memory [B, N, dim] -> past_{j}_key/value [B, h, N, d] for each cross-attention layer j
    decoder.onnx       one cached decoder step: tokens [B, 1] (int64) and past_{j}_key/value for every
                       attention layer j -> logits [B, V] of the next token and present_{j}_key/value
                       [B, h, L+1, d] for each self-attention layer j (cross-attention ones never change)
    onnx.json          format version and the cache layout: the kind ("self"/"cross") of each layer j
    config.yaml, tokenizer.json, meta.json   copied from the model folder

The first decoder step runs ``decoder.onnx`` with zero-length self-attention caches, so one graph
serves every step.  :class:`OnnxModel` has the decoding interface of
:class:`pix2tex.models.model.Model` that :class:`pix2tex.LatexOCR` uses (``encode``,
``decoding_step``, ``generate``, ``beam_search``, ``cfg``, ``tokenizer``); :class:`OnnxStep` is one
more step for the decoding loops of :mod:`pix2tex.models.decoding`, so greedy and beam-search
tokens follow exactly the same rules as PyTorch's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pix2tex.checkpoint import CheckpointError, read_folder_files
from pix2tex.config import ModelConfig
from pix2tex.models import decoding
from pix2tex.models.decoding import FlatCache, Generation, check_max_new_tokens
from pix2tex.models.vit import check_images
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "ENCODER", "CROSS_CACHE", "DECODER", "MANIFEST", "FORMAT", "FORMAT_VERSION", "SELF", "CROSS", "cache_names",
    "check_threads", "make_session", "read_manifest", "OnnxStep", "OnnxModel", "load_onnx_folder",
]

ENCODER, CROSS_CACHE, DECODER, MANIFEST = "encoder.onnx", "cross_cache.onnx", "decoder.onnx", "onnx.json"
FORMAT, FORMAT_VERSION = "pix2tex-onnx", 1
SELF, CROSS = "self", "cross"  # cache kinds, in the order of the decoder's attention layers


def cache_names(prefix: str, layer: int) -> tuple[str, str]:
    """Graph tensor names of one attention layer's cache, e.g. ``("past_0_key", "past_0_value")``."""
    return f"{prefix}_{layer}_key", f"{prefix}_{layer}_value"


def check_threads(threads: int | None) -> None:
    """Raise ValueError (one line) unless ``threads`` is None or a positive integer."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")


def make_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session for one graph; ``threads`` intra-op threads (None: onnxruntime's default).

    Raises CheckpointError (one line, naming the file) when onnxruntime cannot load the graph.
    """
    try:
        import onnxruntime as ort  # imported here: an optional dependency that only this engine needs
    except ImportError:
        raise ImportError("the ONNX engine needs onnxruntime: pip install 'pix2tex[onnx]'") from None
    check_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: shape-inference notes about dynamic axes are noise
    # Three sessions take turns; idle pools spinning for work would steal the active one's cores
    # (greedy decoding measured 2.4x slower with spinning on a busy 2-core machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only (Fail, InvalidProtobuf, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ONNX graph ({first})") from None


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class OnnxStep:
    """The decoder step of :mod:`pix2tex.models.decoding` run by ``cross_cache.onnx`` and ``decoder.onnx``.

    Its cache is the lean step's :class:`FlatCache` (the graphs are exported from that step): the
    cross-attention keys/values come from ``cross_cache.onnx`` once, the self-attention ones are
    replaced by the graph's ``present`` outputs after each step.  The graphs attend to every memory
    row, so there is no memory mask (LatexOCR decodes models trained with ``mask_padding`` one
    image at a time on this engine, which needs none).
    """

    def __init__(self, cross_session: Any, step_session: Any, layers: list[str], cfg: ModelConfig):
        self.cross_session, self.step_session = cross_session, step_session
        self.layers = list(layers)
        self.num_tokens = cfg.num_tokens
        inputs = {i.name: i.shape for i in step_session.get_inputs()}
        # Heads and head width of each self-attention cache are static dimensions of the graph.
        self._self_shapes: list[tuple[tuple[int, int], tuple[int, int]]] = []
        for j, kind in enumerate(self.layers):
            names = cache_names("past", j)
            if any(name not in inputs for name in names):
                raise CheckpointError(f"{DECODER}: no input {names[0]} for attention layer {j} listed in {MANIFEST}")
            if kind == SELF:
                key, value = inputs[names[0]], inputs[names[1]]
                self._self_shapes.append(((int(key[1]), int(key[3])), (int(value[1]), int(value[3]))))
        self._cross_outputs = [n for j, kind in enumerate(self.layers) if kind == CROSS for n in cache_names("past", j)]
        self._step_outputs = ["logits"] + [
            n for j, kind in enumerate(self.layers) if kind == SELF for n in cache_names("present", j)]

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> FlatCache:
        if memory_mask is not None:
            raise ValueError("the ONNX decoder graphs take no memory mask; decode one image at a time")
        outputs = self.cross_session.run(self._cross_outputs, {"memory": _numpy(memory)})
        cross = iter(torch.from_numpy(a) for a in outputs)
        batch = memory.shape[0]
        empty = [(torch.zeros(batch, kh, 0, kd), torch.zeros(batch, vh, 0, vd))
                 for (kh, kd), (vh, vd) in self._self_shapes]
        return FlatCache(self_kv=empty, cross_kv=list(zip(cross, cross, strict=True)), length=0)

    def __call__(self, tokens: Tensor, cache: FlatCache) -> Tensor:
        """Logits [B, V] after ``tokens`` [B, 1] (one new token per row); the cache grows by it."""
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"the ONNX decoder step takes one new token per row, got tokens {tuple(tokens.shape)}")
        feeds = {"tokens": _numpy(tokens.long())}
        self_kv, cross_kv = iter(cache.self_kv), iter(cache.cross_kv)
        for j, kind in enumerate(self.layers):
            key, value = cache_names("past", j)
            feeds[key], feeds[value] = map(_numpy, next(self_kv) if kind == SELF else next(cross_kv))
        logits, *present = self.step_session.run(self._step_outputs, feeds)
        present = iter(torch.from_numpy(a) for a in present)
        cache.self_kv = list(zip(present, present, strict=True))
        cache.length += 1
        return torch.from_numpy(logits)


class OnnxModel:
    """Encoder and decoder graphs in onnxruntime, with :class:`pix2tex.models.model.Model`'s decoding interface."""

    def __init__(self, folder: str | os.PathLike, cfg: ModelConfig, tokenizer: LatexTokenizer,
                 layers: list[str], *, threads: int | None = None):
        check_threads(threads)
        folder = Path(folder)
        self.cfg, self.tokenizer, self.folder = cfg, tokenizer, folder
        self.encoder_session = make_session(folder / ENCODER, threads)
        self.step = OnnxStep(make_session(folder / CROSS_CACHE, threads), make_session(folder / DECODER, threads),
                             layers, cfg)

    def encode(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images [B, channels, H, W] -> memory [B, N, dim] (same input checks as the PyTorch encoder)."""
        check_images(images, self.cfg)
        if mask is not None:
            raise ValueError("the ONNX encoder graph takes no padding mask; encode one image at a time")
        (memory,) = self.encoder_session.run(None, {"images": _numpy(images.float())})
        return torch.from_numpy(memory)

    def decoding_step(self, memory: Tensor) -> OnnxStep:  # noqa: ARG002 - the PyTorch engine's signature
        """The step the decoding loops run (the graphs; ``memory`` is not needed to choose it)."""
        return self.step

    def generate(self, images: Tensor, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop_at_eos: bool = True,
                 generator: torch.Generator | None = None) -> Generation:
        """Greedy (default) or sampled LaTeX ids for each image; see :func:`pix2tex.models.decoding.generate`."""
        steps = check_max_new_tokens(max_new_tokens, self.cfg.max_seq_len)
        return decoding.generate(self.step, self.encode(images), steps=steps,
                                 temperature=temperature, top_k=top_k, top_p=top_p, stop_at_eos=stop_at_eos,
                                 generator=generator)

    def beam_search(self, images: Tensor, *, beam_size: int, max_new_tokens: int | None = None,
                    length_penalty: float = 1.0) -> Generation:
        """Length-normalised beam search for each image; see :func:`pix2tex.models.decoding.beam_search`."""
        return decoding.beam_search(self.step, self.encode(images), beam_size=beam_size,
                                    steps=check_max_new_tokens(max_new_tokens, self.cfg.max_seq_len),
                                    length_penalty=length_penalty)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The checked contents of ``onnx.json``; CheckpointError (one line) if it is missing or not ours."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: not an ONNX model folder (no {MANIFEST}; create one with "
                              f"`pix2tex export --onnx DIR`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pix2tex ONNX manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: ONNX format version {manifest.get('version')!r} is not supported "
                              f"(this pix2tex reads version {FORMAT_VERSION}; export the model again)")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers or set(layers) - {SELF, CROSS} or SELF not in layers:
        raise CheckpointError(f"{path}: 'layers' must list the decoder's attention layers as 'self'/'cross'")
    return manifest


def load_onnx_folder(path: str | os.PathLike | None, device: str | torch.device = "cpu", *, threads: int | None = None):
    """Load (OnnxModel, ModelConfig, LatexTokenizer, meta) from an exported folder, like ``load_model_folder``.

    ``device`` must be the CPU (the engine uses onnxruntime's CPU provider); ``threads`` sets its
    intra-op threads (None: onnxruntime's default, one per core).
    """
    if torch.device(device).type != "cpu":
        raise ValueError(f"the ONNX engine runs on the CPU only, got device {device!r}")
    if path is None:  # there is no bundled export: the caller's "default model" has to be exported first
        raise CheckpointError("the ONNX engine needs an exported folder (make one with `pix2tex export --onnx DIR`)")
    folder = Path(path)
    manifest = read_manifest(folder)
    for name in (ENCODER, CROSS_CACHE, DECODER):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete ONNX model folder (no {name})")
    config, tokenizer, meta = read_folder_files(folder, "ONNX model folder")
    model = OnnxModel(folder, config, tokenizer, manifest["layers"], threads=threads)
    return model, config, tokenizer, meta
