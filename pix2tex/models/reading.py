"""The torch engine of :class:`pix2tex.LatexOCR`: prepared images -> LaTeX with the PyTorch weights.

:mod:`pix2tex.inference` imports this module only when a folder is read with PyTorch (a folder
without ONNX graphs, or ``engine="torch"``), so the light install never needs torch.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pix2tex.checkpoint import load_model_folder
from pix2tex.models import decoding
from pix2tex.preprocess import to_batch

__all__ = ["TorchReader", "CPU_ENCODER_BATCH"]

CPU_ENCODER_BATCH = 2  # images encoded at once on a CPU (see TorchReader._encode_unpadded)


class TorchReader:
    """Decoding with PyTorch over the folder's weights (see :meth:`_encode_unpadded` for batches)."""

    def __init__(self, checkpoint: str | os.PathLike | None, device: str | None, encoder_batch: int | None,
                 batch_size: int):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.config, self.tokenizer, self.meta = load_model_folder(checkpoint, self.device)
        self.encoder_batch = encoder_batch or (CPU_ENCODER_BATCH if self.device.type == "cpu" else batch_size)

    def _input(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(to_batch(arrays, self.config.patch_size)).to(self.device)

    def decode(self, arrays: list[np.ndarray], beam: int) -> tuple[list[str], list[float]]:
        with torch.inference_mode():
            limit = self.config.max_seq_len - 1
            if self.config.mask_padding:
                memory, mask = self._encode_unpadded(arrays)
            else:  # a model trained to attend to padding reads a padded batch, as it was trained
                x = self._input(arrays)
                memory, mask = torch.cat([self.model.encode(x[i : i + self.encoder_batch])
                                          for i in range(0, len(x), self.encoder_batch)]), None
            step = self.model.decoding_step(memory)
            if beam > 1:
                out = decoding.beam_search(step, memory, beam_size=beam, steps=limit, memory_mask=mask)
            else:
                out = decoding.generate(step, memory, steps=limit, memory_mask=mask)
            return self.tokenizer.decode_latex(out.ids.cpu()), out.logprob.float().cpu().tolist()

    def _encode_unpadded(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Memories of images encoded each on its own canvas, padded for the decoder, and their mask.

        Masking padded patches in attention is not enough for a reading to be independent of its
        batch: the backbone's convolutions see the padding beside an image's right and bottom
        edges (normalized, it is no longer the zero border a lone image gets), so memories
        changed by up to 1.2 in a mixed batch.  So only images of the same canvas size are
        encoded together (no padding at all), a few at a time, which also bounds the encoder's
        activations, the peak of a batch's memory (986 im2latex images, batches of 8: 969 MiB
        peak RSS against 1,016 MiB with the whole batch at once, see docs/RESULTS.md); the
        decoder then reads all memories together, their padded rows hidden.
        """
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for k, arr in enumerate(arrays):
            by_shape.setdefault(arr.shape, []).append(k)
        rows: list[torch.Tensor] = [None] * len(arrays)  # type: ignore[list-item] - each filled below
        for indices in by_shape.values():
            for lo in range(0, len(indices), self.encoder_batch):
                part = indices[lo : lo + self.encoder_batch]
                memory = self.model.encode(self._input([arrays[k] for k in part]))
                for k, m in zip(part, memory, strict=True):
                    rows[k] = m
        lengths = [m.shape[0] for m in rows]
        if len(set(lengths)) == 1:
            return torch.stack(rows), None
        memory = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        positions = torch.arange(memory.shape[1], device=memory.device)
        return memory, positions[None, :] < torch.tensor(lengths, device=memory.device)[:, None]
