"""Image → LaTeX: :class:`LatexOCR`, the Python API behind ``pix2tex predict``.

    >>> from pix2tex import LatexOCR
    >>> model = LatexOCR()            # the bundled model; or LatexOCR("runs/x/best")
    >>> model(PIL.Image.open("formula.png"))
    '\\frac { a } { b }'

The object holds the loaded model and nothing else; every call is independent.  Images go
through :mod:`pix2tex.preprocess` (any format, dark mode, margins, scale normalization), are
grouped into batches of similar size, decoded greedily or with beam search, and normalized.

Two engines read: onnxruntime over the model folder's ONNX graphs (the default wherever the folder
has them, as the bundled one does; all the light install ``pip install pix2tex`` has) and PyTorch
over its weights (``pix2tex[train]``).  Both take the same prepared images and follow the same
decoding rules (:mod:`pix2tex.decoding_rules`); this module imports neither until one is chosen.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pix2tex.config import check_glyph_scale
from pix2tex.fileio import printable_name
from pix2tex.metrics import edit_distances
from pix2tex.model_folder import CheckpointError, check_glyph_estimator, glyph_estimator, glyph_scale
from pix2tex.onnx_engine import has_onnx_graphs
from pix2tex.preprocess import DEFAULT_GLYPH_HEIGHT, MAX_PIXELS, load_image, prepare, to_batch

__all__ = ["LatexOCR", "Prediction", "image_error", "reading_scales", "consensus", "ENGINES", "choose_engine",
           "TRAIN_EXTRA"]

ENGINES = ("auto", "onnx", "torch")
TRAIN_EXTRA = "pip install 'pix2tex[train]'"  # what a light install lacks to train, export, evaluate

ImageSource = str | os.PathLike | bytes | Image.Image



@dataclass
class Prediction:
    """One image's result: ``latex`` is None when the image could not be read (see ``error``)."""

    source: str
    latex: str | None
    confidence: float | None = None  # mean log-probability of the decoded tokens (≤ 0)
    seconds: float = 0.0
    error: str | None = None


def image_error(exc: BaseException, name: str) -> str:
    """Why an image could not be read, as one line that starts with ``name: `` (the loaders name
    their source themselves; other errors, such as a blank image's, get the name put in front)."""
    message = (str(exc).splitlines() or [type(exc).__name__])[0]
    prefix = f"{printable_name(name)}: "
    return message if message.startswith(prefix) else prefix + message


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<image {index}>"


SCALE_STEP = 1.12  # the ratio between neighbouring glyph sizes of a multi-scale reading
MAX_SCALES = 8


def reading_scales(glyph_scale: float, n: int) -> list[float]:
    """``n`` glyph scales ``SCALE_STEP`` apart around ``glyph_scale``: itself first, then one step
    smaller, one larger, two smaller, … (n = 6: glyph_scale x 1.12^k for k = -3..2)."""
    scales, k = [glyph_scale], 1
    while len(scales) < n:
        scales.append(glyph_scale / SCALE_STEP**k)
        if len(scales) < n:
            scales.append(glyph_scale * SCALE_STEP**k)
        k += 1
    return scales


def consensus(readings: Sequence[str]) -> int:
    """Index of the reading with the least summed token edit distance to all the readings (the
    minimum-Bayes-risk choice among readings of one image at several sizes); ties go to the first.

    A reading that the other sizes agree with is rarely a misreading caused by one size.
    """
    costs = [sum(edit_distances([r] * len(readings), readings)) for r in readings]
    return costs.index(min(costs))


def _glyph_scale(meta: dict, chosen: float | None, rescale: bool) -> float:
    """The caller's glyph scale if given (checked like a model folder's), else the folder's."""
    if chosen is None:
        return glyph_scale(meta)
    if not rescale:
        raise ValueError("glyph_scale needs rescale: without it images are read at their own size")
    return check_glyph_scale(chosen)  # a ConfigError, which is a ValueError


def _glyph_estimator(meta: dict, chosen: str | None) -> str:
    """The caller's glyph estimator if given (checked like a model folder's), else the folder's."""
    try:
        return glyph_estimator(meta) if chosen is None else check_glyph_estimator(chosen)
    except CheckpointError as exc:
        raise ValueError(str(exc)) from None


class _PerImage:
    """Progress in images for a reading that decodes ``n`` inputs per image."""

    def __init__(self, progress, n: int):
        self.progress, self.n, self.done = progress, n, 0

    def update(self, inputs: int) -> None:
        before = self.done // self.n
        self.done += inputs
        if self.done // self.n > before:
            self.progress.update(self.done // self.n - before)


def choose_engine(engine: str, checkpoint: str | os.PathLike | None) -> str:
    """The engine that reads ``checkpoint``: ``engine`` itself, or for "auto" onnxruntime when the
    folder has ONNX graphs and onnxruntime is installed, else PyTorch."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine != "auto":
        return engine
    if has_onnx_graphs(checkpoint) and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "torch"


class _OnnxReader:
    """Decoding with onnxruntime over the folder's ONNX graphs (numpy arrays throughout)."""

    def __init__(self, checkpoint: str | os.PathLike | None, device: str | None, threads: int | None):
        if device not in (None, "cpu"):
            raise ValueError(f"the ONNX engine runs on the CPU only, got device {device!r}")
        from pix2tex.onnx_engine import load_onnx_folder

        self.device = "cpu"
        self.model, self.config, self.tokenizer, self.meta = load_onnx_folder(checkpoint, threads=threads)

    def decode(self, arrays: list[np.ndarray], beam: int) -> tuple[list[str], list[float]]:
        x = to_batch(arrays, self.config.patch_size)
        out = self.model.beam_search(x, beam_size=beam) if beam > 1 else self.model.generate(x)
        return self.tokenizer.decode_latex(out.ids), out.logprob.astype(float).tolist()


class LatexOCR:
    """Read formula images with a trained model folder (default: the model shipped in the package).

    Args:
        checkpoint: model folder (weights and/or ONNX graphs, config, tokenizer) or None for the
            bundled model.
        device: "cpu", "cuda", … (torch engine; default: CUDA when available).
        beam: beam size; 1 is greedy decoding.
        batch_size: images decoded together (grouped by size).
        encoder_batch: images of a batch encoded at once: memory against speed (default: 2 on a
            CPU, which bounds peak memory at some cost in speed; the whole batch elsewhere).
        rescale: normalize the glyph size of input images to the training size.
        glyph_scale: with ``rescale``, read glyphs at this multiple of the training size (default:
            the model folder's ``glyph_scale``, chosen on validation renders; 1 when it has none).
        engine: "auto" (default): onnxruntime when the folder has ONNX graphs (the bundled model
            does; ``pix2tex export --onnx`` writes them), else PyTorch; or "onnx", "torch".
        threads: CPU threads for the onnx engine (default: onnxruntime's choice).
        max_pixels: images with more pixels are refused from their header (a server's limit).
        glyph_estimator: how glyphs are measured, one of
            :data:`pix2tex.preprocess.GLYPH_ESTIMATORS` (default: the model folder's; "soft" when
            it names none).
        scales: read each image at this many glyph sizes around ``glyph_scale`` (see
            :func:`reading_scales`) and keep the reading the others agree with most
            (:func:`consensus`): more accurate, ``scales`` times the work.  1 (default): one size.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, device: str | None = None,
                 beam: int = 1, batch_size: int = 8, rescale: bool = True, engine: str = "auto",
                 threads: int | None = None, encoder_batch: int | None = None, max_pixels: int = MAX_PIXELS,
                 glyph_scale: float | None = None, scales: int = 1, glyph_estimator: str | None = None):
        if isinstance(scales, bool) or not isinstance(scales, int) or not 1 <= scales <= MAX_SCALES:
            raise ValueError(f"scales must be a whole number from 1 to {MAX_SCALES}, got {scales!r}")
        if scales > 1 and not rescale:
            raise ValueError("scales needs rescale: without it images are read at their own size")
        if beam < 1 or batch_size < 1 or (encoder_batch is not None and encoder_batch < 1):
            raise ValueError(f"beam ({beam}), batch_size ({batch_size}) and encoder_batch ({encoder_batch}) "
                             "must be at least 1")
        self.engine = choose_engine(engine, checkpoint)
        if self.engine == "onnx":
            self._reader: Any = _OnnxReader(checkpoint, device, threads)
        else:
            try:
                from pix2tex.models.reading import TorchReader  # the train extra: torch, timm, x-transformers
            except ImportError as exc:
                raise ImportError(f"this model folder has no ONNX graphs, and reading its weights needs PyTorch "
                                  f"({exc.name} is missing): {TRAIN_EXTRA}, or read its ONNX export "
                                  f"(`pix2tex export --onnx DIR`)") from None
            self._reader = TorchReader(checkpoint, device, encoder_batch, batch_size)
        self.device, self.model, self.config = self._reader.device, self._reader.model, self._reader.config
        self.tokenizer, self.meta = self._reader.tokenizer, self._reader.meta
        if self.engine == "onnx" and self.config.mask_padding:
            # The exported graphs have no padding mask: one image per batch keeps readings exact.
            batch_size = 1
        self.beam, self.batch_size, self.rescale, self.max_pixels = beam, batch_size, rescale, max_pixels
        self.glyph_scale = _glyph_scale(self.meta, glyph_scale, rescale)
        self.glyph_estimator = _glyph_estimator(self.meta, glyph_estimator)
        self.scales = reading_scales(self.glyph_scale, scales)

    def __call__(self, img: ImageSource) -> str:
        """LaTeX of one image; raises ``ValueError`` (one line) if it cannot be read."""
        result = self.predict([img])[0]
        if result.error is not None:
            raise ValueError(result.error)
        return result.latex or ""

    def prepare(self, img: ImageSource, name: str | None = None) -> np.ndarray:
        """The model input for one image: grayscale, cropped, scaled, padded (uint8).

        ``name`` is what error messages call the image (default: its path, or "<bytes>")."""
        return self._prepare_at(self._load(img, name), self.glyph_scale)

    def _prepare_all(self, img: ImageSource, name: str | None = None) -> list[np.ndarray]:
        """The model inputs for one image, one per reading scale (the image is decoded once)."""
        loaded = self._load(img, name)
        return [self._prepare_at(loaded, scale) for scale in self.scales]

    def _load(self, img: ImageSource, name: str | None = None) -> Image.Image:
        return load_image(img, max_pixels=self.max_pixels, name=name)

    def _prepare_at(self, loaded: Image.Image, scale: float) -> np.ndarray:
        c = self.config
        return prepare(loaded, patch_size=c.patch_size, max_height=c.max_height, max_width=c.max_width,
                       rescale=self.rescale, target_glyph_height=DEFAULT_GLYPH_HEIGHT * scale,
                       glyph_estimator=self.glyph_estimator)

    def predict(self, images: Sequence[ImageSource], *, names: Sequence[str] | None = None,
                progress: Iterable | None = None) -> list[Prediction]:
        """Predict many images; unreadable ones get ``error`` set and do not stop the others.

        ``names``: what results and error messages call each image (default: its path, or
        "<image K>" for bytes and PIL images).  ``progress``: an optional tqdm-like object with
        ``update(n)``.
        """
        if names is not None and len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        names = [_name(img, k) for k, img in enumerate(images)] if names is None else list(names)
        results: list[Prediction | None] = [None] * len(images)
        prepared: list[tuple[int, list[np.ndarray], float]] = []
        for k, img in enumerate(images):
            start = time.perf_counter()
            try:
                prepared.append((k, self._prepare_all(img, names[k]), time.perf_counter() - start))
            except (ValueError, OSError) as exc:
                results[k] = Prediction(names[k], None, error=image_error(exc, names[k]))
                if progress is not None:
                    progress.update(1)
        n = len(self.scales)
        readings = self.read([arr for _, arrays, _ in prepared for arr in arrays],
                             progress=progress if n == 1 or progress is None else _PerImage(progress, n))
        for j, (k, _, prep_s) in enumerate(prepared):
            mine = readings[j * n : (j + 1) * n]
            text, conf, _ = mine[consensus([r[0] for r in mine]) if n > 1 else 0]
            results[k] = Prediction(names[k], text, conf, prep_s + sum(r[2] for r in mine))
        return [r for r in results if r is not None]

    def read(self, arrays: Sequence[np.ndarray], *,
             progress: Iterable | None = None) -> list[tuple[str, float, float]]:
        """(LaTeX, confidence, seconds) of prepared images (:meth:`prepare`), in their order.

        Images are decoded in batches of similar size; ``seconds`` is an even share of the batch's
        decoding time.
        """
        order = sorted(range(len(arrays)), key=lambda k: arrays[k].shape)  # size buckets: little padding
        out: list[tuple[str, float, float] | None] = [None] * len(arrays)
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo : lo + self.batch_size]
            start = time.perf_counter()
            latex, confidence = self._reader.decode([arrays[k] for k in chunk], self.beam)
            share = (time.perf_counter() - start) / len(chunk)
            for k, text, conf in zip(chunk, latex, confidence, strict=True):
                out[k] = (text, conf, share)
            if progress is not None:
                progress.update(len(chunk))
        return [r for r in out if r is not None]
