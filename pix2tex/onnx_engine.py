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
serves every step.  The bundled model folder carries these graphs beside its PyTorch weights; an
export (``pix2tex export --onnx DIR``) holds them alone.

This engine needs no torch: arrays are numpy's, and decoding is :mod:`pix2tex.onnx_decoding`
(greedy and beam search, the rules of :mod:`pix2tex.models.decoding`).  :class:`OnnxModel` has the
decoding interface :class:`pix2tex.LatexOCR` uses (``encode``, ``generate``, ``beam_search``,
``cfg``, ``tokenizer``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pix2tex import onnx_decoding
from pix2tex.config import ModelConfig
from pix2tex.decoding_rules import check_max_new_tokens
from pix2tex.model_folder import ONNX_MANIFEST, CheckpointError, read_folder_files, resolve_model_folder
from pix2tex.onnx_decoding import ArrayCache, Generation
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "ENCODER", "CROSS_CACHE", "DECODER", "MANIFEST", "FORMAT", "FORMAT_VERSION", "SELF", "CROSS", "cache_names",
    "GRAPHS", "check_threads", "make_session", "read_manifest", "check_images", "OnnxStep", "OnnxModel",
    "load_onnx_folder", "has_onnx_graphs",
]

ENCODER, CROSS_CACHE, DECODER, MANIFEST = "encoder.onnx", "cross_cache.onnx", "decoder.onnx", ONNX_MANIFEST
GRAPHS = (ENCODER, CROSS_CACHE, DECODER)
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
        raise ImportError("the ONNX engine needs onnxruntime: pip install pix2tex") from None
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


def check_images(images: np.ndarray, cfg: ModelConfig) -> None:
    """ValueError (one line) unless ``images`` is a float batch [B, channels, H, W] the graphs take
    (H, W multiples of the patch size within the model's maximum; the torch encoder's checks)."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1] != cfg.channels:
        raise ValueError(f"images must be a numpy array [B, {cfg.channels}, H, W], got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be normalized floats (pix2tex.preprocess.to_batch), got {images.dtype}")
    _, _, h, w = images.shape
    p = cfg.patch_size
    if h % p or w % p or not (0 < h <= cfg.max_height and 0 < w <= cfg.max_width):
        raise ValueError(f"image size {h}x{w} must be multiples of {p} within {cfg.max_height}x{cfg.max_width}")


class OnnxStep:
    """One decoder step run by ``cross_cache.onnx`` (once) and ``decoder.onnx`` (every step).

    Its cache is an :class:`pix2tex.onnx_decoding.ArrayCache`: the cross-attention keys/values come
    from ``cross_cache.onnx`` once, the self-attention ones are replaced by the graph's ``present``
    outputs after each step.  The graphs attend to every memory row, so there is no memory mask
    (LatexOCR decodes models trained with ``mask_padding`` one image at a time on this engine,
    which needs none).
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

    def start(self, memory: np.ndarray) -> ArrayCache:
        outputs = iter(self.cross_session.run(self._cross_outputs, {"memory": np.ascontiguousarray(memory)}))
        batch = memory.shape[0]
        empty = [(np.zeros((batch, kh, 0, kd), np.float32), np.zeros((batch, vh, 0, vd), np.float32))
                 for (kh, kd), (vh, vd) in self._self_shapes]
        return ArrayCache(self_kv=empty, cross_kv=list(zip(outputs, outputs, strict=True)), length=0)

    def __call__(self, tokens: np.ndarray, cache: ArrayCache) -> np.ndarray:
        """Logits [B, V] after ``tokens`` [B, 1] (one new token per row); the cache grows by it."""
        if tokens.ndim != 2 or tokens.shape[1] != 1:
            raise ValueError(f"the ONNX decoder step takes one new token per row, got tokens {tuple(tokens.shape)}")
        feeds = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
        self_kv, cross_kv = iter(cache.self_kv), iter(cache.cross_kv)
        for j, kind in enumerate(self.layers):
            key, value = cache_names("past", j)
            feeds[key], feeds[value] = (np.ascontiguousarray(a) for a in
                                        (next(self_kv) if kind == SELF else next(cross_kv)))
        logits, *present = self.step_session.run(self._step_outputs, feeds)
        present = iter(present)
        cache.self_kv = list(zip(present, present, strict=True))
        cache.length += 1
        return logits


class OnnxModel:
    """Encoder and decoder graphs in onnxruntime, with the decoding interface LatexOCR uses."""

    def __init__(self, folder: str | os.PathLike, cfg: ModelConfig, tokenizer: LatexTokenizer,
                 layers: list[str], *, threads: int | None = None):
        check_threads(threads)
        folder = Path(folder)
        self.cfg, self.tokenizer, self.folder = cfg, tokenizer, folder
        self.encoder_session = make_session(folder / ENCODER, threads)
        self.step = OnnxStep(make_session(folder / CROSS_CACHE, threads), make_session(folder / DECODER, threads),
                             layers, cfg)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images [B, channels, H, W] (float32, as :func:`pix2tex.preprocess.to_batch` makes them) ->
        memory [B, N, dim]."""
        check_images(images, self.cfg)
        (memory,) = self.encoder_session.run(None, {"images": np.ascontiguousarray(images, dtype=np.float32)})
        return memory

    def generate(self, images: np.ndarray, *, max_new_tokens: int | None = None,
                 stop_at_eos: bool = True) -> Generation:
        """Greedy LaTeX ids for each image; see :func:`pix2tex.onnx_decoding.generate`."""
        steps = check_max_new_tokens(max_new_tokens, self.cfg.max_seq_len)
        return onnx_decoding.generate(self.step, self.encode(images), steps=steps, stop_at_eos=stop_at_eos)

    def beam_search(self, images: np.ndarray, *, beam_size: int, max_new_tokens: int | None = None,
                    length_penalty: float = 1.0) -> Generation:
        """Length-normalised beam search for each image; see :func:`pix2tex.onnx_decoding.beam_search`."""
        return onnx_decoding.beam_search(self.step, self.encode(images), beam_size=beam_size,
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


def load_onnx_folder(path: str | os.PathLike | None, *, threads: int | None = None):
    """Load (OnnxModel, ModelConfig, LatexTokenizer, meta) from a folder with ONNX graphs (None: the
    bundled model), like ``load_model_folder``; ``threads`` sets onnxruntime's intra-op threads
    (None: its default, one per core)."""
    folder = resolve_model_folder(path, needs=MANIFEST)
    manifest = read_manifest(folder)
    for name in GRAPHS:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete ONNX model folder (no {name})")
    config, tokenizer, meta = read_folder_files(folder, "ONNX model folder")
    model = OnnxModel(folder, config, tokenizer, manifest["layers"], threads=threads)
    return model, config, tokenizer, meta


def has_onnx_graphs(path: str | os.PathLike | None) -> bool:
    """Whether the folder (None: the bundled model) holds the ONNX graphs this engine reads."""
    try:
        folder = resolve_model_folder(path, needs=MANIFEST)
    except CheckpointError:
        return False
    return all((folder / name).is_file() for name in GRAPHS)
