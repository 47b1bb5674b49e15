"""The whole network: image encoder + LaTeX decoder, and how to build and describe it.

:func:`get_model` turns a :class:`~pix2tex.config.ModelConfig` into a :class:`Model`.  The model
takes normalized float images [B, channels, H, W] (no preprocessing happens here) and token ids
from :meth:`pix2tex.tokenizer.LatexTokenizer.encode` (``BOS … EOS PAD …``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pix2tex.config import ModelConfig
from pix2tex.models.decoding import DecoderStep
from pix2tex.models.hybrid import build_hybrid_encoder
from pix2tex.models.transformer import Generation, TextDecoder
from pix2tex.models.vit import ImageEncoder, build_vit_encoder, patch_mask
from pix2tex.tokenizer import PAD_ID

__all__ = ["ModelOutput", "Model", "get_model", "count_parameters", "model_summary"]


@dataclass
class ModelOutput:
    logits: Tensor  # [B, T-1, V]: prediction for targets[:, 1:]
    loss: Tensor  # scalar: next-token cross-entropy, PAD positions ignored


class Model(nn.Module):
    """Encoder (hybrid ResNetV2+ViT or plain ViT) feeding a cross-attending Transformer decoder."""

    def __init__(self, encoder: ImageEncoder, decoder: TextDecoder, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.cfg = cfg

    def memory_mask(self, images: Tensor, sizes: Tensor | None) -> Tensor | None:
        """The padding mask of the memory rows (None: every row is attended to).

        Only models built with ``mask_padding`` use it; ``sizes`` [B, 2] are the images' (height,
        width) before padding to the batch's canvas.
        """
        if not self.cfg.mask_padding or sizes is None:
            return None
        return patch_mask(images, sizes, self.cfg.patch_size)

    def encode(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images [B, channels, H, W] -> memory [B, N, dim] (padded patches hidden where ``mask`` says)."""
        return self.encoder(images, mask)

    def forward(self, images: Tensor, targets: Tensor, sizes: Tensor | None = None,
                label_smoothing: float = 0.0) -> ModelOutput:
        """Teacher-forced logits for ``targets[:, 1:]`` given ``targets[:, :-1]``, and their loss."""
        _check_targets(targets, images.shape[0] if isinstance(images, Tensor) else None)
        mask = self.memory_mask(images, sizes)
        logits = self.decoder(targets[:, :-1], self.encode(images, mask), mask)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=label_smoothing)
        return ModelOutput(logits=logits, loss=loss)

    def decoding_step(self, memory: Tensor) -> DecoderStep:
        """The step :mod:`pix2tex.models.decoding`'s loops run on ``memory`` (the lean one where it applies)."""
        return self.decoder.decoding_step(memory)

    @torch.no_grad()
    def generate(self, images: Tensor, *, sizes: Tensor | None = None, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 stop_at_eos: bool = True, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Generation:
        """Greedy (default) or sampled LaTeX ids for each image; see :meth:`TextDecoder.generate`."""
        mask = self.memory_mask(images, sizes)
        return self.decoder.generate(
            self.encode(images, mask), memory_mask=mask, max_new_tokens=max_new_tokens, temperature=temperature,
            top_k=top_k, top_p=top_p, stop_at_eos=stop_at_eos, use_cache=use_cache, generator=generator)

    @torch.no_grad()
    def beam_search(self, images: Tensor, *, beam_size: int, sizes: Tensor | None = None,
                    max_new_tokens: int | None = None, length_penalty: float = 1.0) -> Generation:
        """Length-normalised beam search for each image; see :meth:`TextDecoder.beam_search`."""
        mask = self.memory_mask(images, sizes)
        return self.decoder.beam_search(
            self.encode(images, mask), memory_mask=mask, beam_size=beam_size, max_new_tokens=max_new_tokens,
            length_penalty=length_penalty)


def _check_targets(targets: Tensor, batch: int | None) -> None:
    if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.dtype != torch.long:
        desc = f"{tuple(targets.shape)} {targets.dtype}" if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a long tensor [B, T] of token ids, got {desc}")
    if targets.shape[1] < 2:
        raise ValueError(f"targets need at least 2 tokens (BOS and one to predict), got length {targets.shape[1]}")
    if batch is not None and targets.shape[0] != batch:
        raise ValueError(f"targets have batch size {targets.shape[0]} but images have {batch}")


def get_model(cfg: ModelConfig) -> Model:
    """Build the network described by ``cfg`` with freshly initialised weights."""
    encoder = build_hybrid_encoder(cfg) if cfg.encoder_structure == "hybrid" else build_vit_encoder(cfg)
    return Model(encoder, TextDecoder(cfg), cfg)


def count_parameters(model: Model) -> dict[str, int]:
    """Number of parameters of the encoder, the decoder and in total."""
    encoder = sum(p.numel() for p in model.encoder.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def model_summary(model: Model) -> str:
    """One line describing the architecture and its size, printed when training starts."""
    cfg, counts = model.cfg, count_parameters(model)
    if cfg.encoder_structure == "hybrid":
        encoder = f"ResNetV2{list(cfg.backbone_layers)}+ViT({cfg.encoder_depth} blocks)"
    else:
        encoder = f"ViT({cfg.encoder_depth} blocks)"
    return (f"model: {encoder} encoder {counts['encoder'] / 1e6:.2f}M + decoder({cfg.num_layers} layers) "
            f"{counts['decoder'] / 1e6:.2f}M = {counts['total'] / 1e6:.2f}M params; dim {cfg.dim}, heads {cfg.heads}, "
            f"patch {cfg.patch_size}, max image {cfg.max_height}x{cfg.max_width}, vocab {cfg.num_tokens}, "
            f"max_seq_len {cfg.max_seq_len}")
