"""Image → LaTeX: :class:`LatexOCR`, the Python API behind ``pix2tex predict``.

    >>> from pix2tex import LatexOCR
    >>> model = LatexOCR()            # the bundled model; or LatexOCR("runs/x/best")
    >>> model(PIL.Image.open("formula.png"))
    '\\frac { a } { b }'

The object holds the loaded model and nothing else; every call is independent.  Images go
through :mod:`pix2tex.preprocess` (any format, dark mode, margins, scale normalization), are
grouped into batches of similar size, decoded greedily or with beam search, and normalized.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pix2tex.checkpoint import load_model_folder
from pix2tex.fileio import printable_name
from pix2tex.normalize import normalize
from pix2tex.preprocess import canvas_sizes, load_image, prepare, to_batch

__all__ = ["LatexOCR", "Prediction"]

ImageSource = str | os.PathLike | bytes | Image.Image

CPU_ENCODER_BATCH = 2  # images encoded at once on a CPU (see LatexOCR._decode)


@dataclass
class Prediction:
    """One image's result: ``latex`` is None when the image could not be read (see ``error``)."""

    source: str
    latex: str | None
    confidence: float | None = None  # mean log-probability of the decoded tokens (≤ 0)
    seconds: float = 0.0
    error: str | None = None


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<image {index}>"


class LatexOCR:
    """Read formula images with a trained model folder (default: the model shipped in the package).

    Args:
        checkpoint: model folder (weights, config, tokenizer) or None for the bundled model.
        device: "cpu", "cuda", … (default: CUDA when available).
        beam: beam size; 1 is greedy decoding.
        batch_size: images decoded together (grouped by size).
        encoder_batch: images of a batch encoded at once: memory against speed (default: 2 on a
            CPU, which bounds peak memory at some cost in speed; the whole batch elsewhere).
        rescale: normalize the glyph size of input images to the training size.
        engine: "torch", or "onnx" to run a folder written by ``pix2tex export --onnx`` with
            onnxruntime (CPU).
        threads: CPU threads for the onnx engine (default: onnxruntime's choice).
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, *, device: str | None = None,
                 beam: int = 1, batch_size: int = 8, rescale: bool = True, engine: str = "torch",
                 threads: int | None = None, encoder_batch: int | None = None):
        if beam < 1 or batch_size < 1 or (encoder_batch is not None and encoder_batch < 1):
            raise ValueError(f"beam ({beam}), batch_size ({batch_size}) and encoder_batch ({encoder_batch}) "
                             "must be at least 1")
        if engine == "onnx":
            from pix2tex.onnx_engine import load_onnx_folder  # onnxruntime is an optional dependency

            self.device = torch.device("cpu")
            self.model, self.config, self.tokenizer, self.meta = load_onnx_folder(checkpoint, device or "cpu",
                                                                                  threads=threads)
        elif engine == "torch":
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model, self.config, self.tokenizer, self.meta = load_model_folder(checkpoint, self.device)
        else:
            raise ValueError(f"engine must be 'torch' or 'onnx', got {engine!r}")
        if engine == "onnx" and self.config.mask_padding:
            # The exported graphs have no padding mask: one image per batch keeps readings exact.
            batch_size = 1
        self.beam, self.batch_size, self.rescale = beam, batch_size, rescale
        self.encoder_batch = encoder_batch or (CPU_ENCODER_BATCH if self.device.type == "cpu" else batch_size)

    def __call__(self, img: ImageSource) -> str:
        """LaTeX of one image; raises ``ValueError`` (one line) if it cannot be read."""
        result = self.predict([img])[0]
        if result.error is not None:
            raise ValueError(result.error)
        return result.latex or ""

    def prepare(self, img: ImageSource) -> np.ndarray:
        """The model input for one image: grayscale, cropped, scaled, padded (uint8)."""
        c = self.config
        return prepare(load_image(img), patch_size=c.patch_size, max_height=c.max_height,
                       max_width=c.max_width, rescale=self.rescale)

    def predict(self, images: Sequence[ImageSource], *, progress: Iterable | None = None) -> list[Prediction]:
        """Predict many images; unreadable ones get ``error`` set and do not stop the others.

        ``progress``: an optional callable-free tqdm-like object with ``update(n)``.
        """
        results: list[Prediction | None] = [None] * len(images)
        prepared: list[tuple[int, np.ndarray, float]] = []
        for k, img in enumerate(images):
            start = time.perf_counter()
            try:
                prepared.append((k, self.prepare(img), time.perf_counter() - start))
            except (ValueError, OSError) as exc:
                message = str(exc)
                name = printable_name(_name(img, k))  # error messages stay one line
                if not message.startswith(name):
                    message = f"{name}: {message}"
                results[k] = Prediction(_name(img, k), None, error=message.splitlines()[0])
                if progress is not None:
                    progress.update(1)
        # Size buckets: sort by padded shape so each batch pads little.
        prepared.sort(key=lambda item: (item[1].shape[0], item[1].shape[1]))
        for lo in range(0, len(prepared), self.batch_size):
            chunk = prepared[lo : lo + self.batch_size]
            start = time.perf_counter()
            latex, confidence = self._decode([arr for _, arr, _ in chunk])
            share = (time.perf_counter() - start) / len(chunk)
            for (k, _, prep_s), text, conf in zip(chunk, latex, confidence):
                results[k] = Prediction(_name(images[k], k), text, conf, prep_s + share)
            if progress is not None:
                progress.update(len(chunk))
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def _decode(self, arrays: list[np.ndarray]) -> tuple[list[str], list[float]]:
        x = to_batch(arrays, self.config.patch_size).to(self.device)
        limit = self.config.max_seq_len - 1
        # The encoder's activations, not the decoder's, set the peak memory of a batch; so images are
        # encoded a few at a time and only their memories are decoded together (986 im2latex images,
        # batches of 8: peak RSS 969 MiB against 1,016 MiB, see docs/RESULTS.md).
        step = self.encoder_batch
        mask = None
        if self.config.mask_padding and len(arrays) > 1:  # padded patches hidden: a reading does not depend on its batch
            mask = self.model.memory_mask(x, canvas_sizes(arrays, x.shape[2], x.shape[3]))
        memory = torch.cat([self.model.encode(x[i : i + step], None if mask is None else mask[i : i + step])
                            for i in range(0, len(x), step)])
        if self.beam > 1:
            out = self.model.decoder.beam_search(memory, beam_size=self.beam, max_new_tokens=limit, memory_mask=mask)
        else:
            out = self.model.decoder.generate(memory, max_new_tokens=limit, memory_mask=mask)
        texts = [normalize(t) for t in self.tokenizer.decode(out.ids.cpu())]
        return texts, out.logprob.float().cpu().tolist()


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Expand folders (their images, sorted) and glob patterns; keep other paths as given."""
    import glob

    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if item != "-" and path.is_dir():
            out += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in suffixes)
        elif item != "-" and not path.exists() and any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            out += matches if matches else [item]
        else:
            out.append(item)
    return out
