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
:class:`pix2tex.models.utils.Model` that :class:`pix2tex.LatexOCR` uses (``encode``, ``generate``,
``beam_search``, ``cfg``, ``tokenizer``); its decoding loops *are* :class:`TextDecoder`'s own
(``OnnxDecoder`` only replaces the step), so greedy and beam-search tokens follow exactly the
same rules as PyTorch's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from x_transformers.x_transformers import Intermediates, LayerIntermediates

from pix2tex.checkpoint import CheckpointError, read_folder_files
from pix2tex.config import ModelConfig
from pix2tex.models.transformer import Generation, TextDecoder
from pix2tex.models.vit import check_images
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "ENCODER", "CROSS_CACHE", "DECODER", "MANIFEST", "FORMAT", "FORMAT_VERSION", "SELF", "CROSS", "cache_names",
    "check_threads", "make_session", "read_manifest", "OnnxDecoder", "OnnxModel", "load_onnx_folder",
]

ENCODER, CROSS_CACHE, DECODER, MANIFEST = "encoder.onnx", "cross_cache.onnx", "decoder.onnx", "onnx.json"
FORMAT, FORMAT_VERSION = "pix2tex-onnx", 1
SELF, CROSS = "self", "cross"  # cache kinds, in the order x-transformers lists its attention layers


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
    except Exception as exc:  # onnxruntime's errors derive from Exception only (Fail, InvalidProtobuf, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ONNX graph ({first})") from None


def _numpy(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


class OnnxDecoder(TextDecoder):
    """A :class:`TextDecoder` whose :meth:`step` runs ``cross_cache.onnx`` and ``decoder.onnx``.

    ``generate`` and ``beam_search`` are inherited unchanged; the cache is the same
    :class:`LayerIntermediates` structure (CPU tensors), so ``reorder_cache`` works on it as is.
    """

    def __init__(self, cross_session: Any, step_session: Any, layers: list[str], cfg: ModelConfig):
        # nn.Module's init only: TextDecoder's would build (random) x-transformers weights that the
        # ONNX graphs already hold.
        nn.Module.__init__(self)
        self.cross_session, self.step_session = cross_session, step_session
        self.layers = list(layers)
        self.num_tokens, self.max_seq_len = cfg.num_tokens, cfg.max_seq_len
        self._fast_step = False  # the graphs are the step: no lean PyTorch step to build, in any mode
        inputs = {i.name: i.shape for i in step_session.get_inputs()}
        # Heads and head width of each self-attention cache are static dimensions of the graph.
        self._self_shapes: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
        for j, kind in enumerate(self.layers):
            names = cache_names("past", j)
            if any(name not in inputs for name in names):
                raise CheckpointError(f"{DECODER}: no input {names[0]} for attention layer {j} listed in {MANIFEST}")
            if kind == SELF:
                key, value = inputs[names[0]], inputs[names[1]]
                self._self_shapes[j] = ((int(key[1]), int(key[3])), (int(value[1]), int(value[3])))
        self._cross_outputs = [n for j, kind in enumerate(self.layers) if kind == CROSS for n in cache_names("past", j)]
        self._step_outputs = ["logits"] + [
            n for j, kind in enumerate(self.layers) if kind == SELF for n in cache_names("present", j)]

    def forward(self, tokens: Tensor, memory: Tensor) -> Tensor:
        raise NotImplementedError("teacher-forced decoding is not exported to ONNX; use the PyTorch model")

    def _first_cache(self, memory: Tensor) -> LayerIntermediates:
        """Cross-attention keys/values of ``memory`` and empty self-attention caches."""
        cross = iter(self.cross_session.run(self._cross_outputs, {"memory": _numpy(memory)}))
        batch = memory.shape[0]
        inters = []
        for j, kind in enumerate(self.layers):
            if kind == SELF:
                (kh, kd), (vh, vd) = self._self_shapes[j]
                kv = (torch.zeros(batch, kh, 0, kd), torch.zeros(batch, vh, 0, vd))
            else:
                kv = (torch.from_numpy(next(cross)), torch.from_numpy(next(cross)))
            inters.append(Intermediates(cached_kv=kv, layer_type="a" if kind == SELF else "c"))
        return LayerIntermediates(attn_intermediates=inters, cache_length=0)

    def step(self, tokens: Tensor, memory: Tensor, cache: LayerIntermediates | None,
             memory_mask: Tensor | None = None) -> tuple[Tensor, LayerIntermediates]:
        """Logits [B, V] after ``tokens`` [B, 1] (one new token per row), and the cache extended by it.

        ``memory`` is read only when ``cache`` is None (the first step, usually BOS).  The exported
        graphs attend to every memory row: ``memory_mask`` must be None (LatexOCR decodes models
        trained with ``mask_padding`` one image at a time on this engine, which needs no mask).
        """
        if memory_mask is not None:
            raise ValueError("the ONNX decoder graphs take no memory mask; decode one image at a time")
        if tokens.dim() != 2 or tokens.shape[1] != 1:
            raise ValueError(f"the ONNX decoder step takes one new token per row, got tokens {tuple(tokens.shape)}")
        if cache is None:
            cache = self._first_cache(memory)
        feeds = {"tokens": _numpy(tokens.long())}
        for j, inter in enumerate(cache.attn_intermediates):
            key, value = cache_names("past", j)
            feeds[key], feeds[value] = _numpy(inter.cached_kv[0]), _numpy(inter.cached_kv[1])
        logits, *present = self.step_session.run(self._step_outputs, feeds)
        present = iter(present)
        inters = []
        for kind, inter in zip(self.layers, cache.attn_intermediates):
            kv = (torch.from_numpy(next(present)), torch.from_numpy(next(present))) if kind == SELF else inter.cached_kv
            inters.append(Intermediates(cached_kv=kv, layer_type=inter.layer_type))
        return torch.from_numpy(logits), LayerIntermediates(attn_intermediates=inters,
                                                            cache_length=cache.cache_length + 1)

    def generate(self, memory: Tensor, *, use_cache: bool = True, **kwargs: Any) -> Generation:
        """:meth:`TextDecoder.generate`; the exported graphs always decode with the key/value cache."""
        if not use_cache:
            raise ValueError("the ONNX engine always decodes with the key/value cache "
                             "(use_cache=False is PyTorch-only)")
        return super().generate(memory, **kwargs)


class OnnxModel:
    """Encoder and decoder graphs in onnxruntime, with :class:`pix2tex.models.utils.Model`'s decoding interface."""

    def __init__(self, folder: str | os.PathLike, cfg: ModelConfig, tokenizer: LatexTokenizer,
                 layers: list[str], *, threads: int | None = None):
        check_threads(threads)
        folder = Path(folder)
        self.cfg, self.tokenizer, self.folder = cfg, tokenizer, folder
        self.encoder_session = make_session(folder / ENCODER, threads)
        self.decoder = OnnxDecoder(make_session(folder / CROSS_CACHE, threads),
                                   make_session(folder / DECODER, threads), layers, cfg)

    def encode(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images [B, channels, H, W] -> memory [B, N, dim] (same input checks as the PyTorch encoder)."""
        check_images(images, self.cfg)
        if mask is not None:
            raise ValueError("the ONNX encoder graph takes no padding mask; encode one image at a time")
        (memory,) = self.encoder_session.run(None, {"images": _numpy(images.float())})
        return torch.from_numpy(memory)

    def generate(self, images: Tensor, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop_at_eos: bool = True,
                 generator: torch.Generator | None = None) -> Generation:
        """Greedy (default) or sampled LaTeX ids for each image; see :meth:`TextDecoder.generate`."""
        return self.decoder.generate(self.encode(images), max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_k=top_k, top_p=top_p, stop_at_eos=stop_at_eos, generator=generator)

    def beam_search(self, images: Tensor, *, beam_size: int, max_new_tokens: int | None = None,
                    length_penalty: float = 1.0) -> Generation:
        """Length-normalised beam search for each image; see :meth:`TextDecoder.beam_search`."""
        return self.decoder.beam_search(self.encode(images), beam_size=beam_size, max_new_tokens=max_new_tokens,
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
