"""Transformer decoder: LaTeX token ids conditioned on the image encoder's memory.

The network is x-transformers' :class:`~x_transformers.TransformerWrapper` around a causal
:class:`~x_transformers.Decoder` with cross-attention.  Decoding goes through one of the steps of
:mod:`pix2tex.models.steps` (the lean step by default, x-transformers' own cached step in training
mode or where the lean one does not apply, the uncached reference on request) and the decoding
loops of :mod:`pix2tex.models.decoding`, which every engine shares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from x_transformers import Decoder, TransformerWrapper

from pix2tex.config import ConfigError, ModelConfig
from pix2tex.models import decoding
from pix2tex.models.decoding import (
    Generation,
    check_max_new_tokens,
    choose_tokens,
    generation_logprobs,
    top_k_filter,
    top_p_filter,
)
from pix2tex.models.steps import LeanStep, LibraryStep, UncachedStep

__all__ = [
    "Generation", "TextDecoder", "top_k_filter", "top_p_filter", "generation_logprobs", "choose_tokens",
]


class TextDecoder(nn.Module):
    """x-transformers decoder with cross-attention to the image memory, plus cached decoding loops."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        decoder_args = dict(cfg.decoder_args)
        if decoder_args.pop("cross_attend", True) is not True:
            raise ConfigError("decoder_args: cross_attend must be true (the decoder reads the image through it)")
        try:
            layers = Decoder(dim=cfg.dim, depth=cfg.num_layers, heads=cfg.heads, cross_attend=True, **decoder_args)
        except (AssertionError, TypeError) as exc:  # x-transformers rejects unknown options with an assert
            raise ConfigError(f"decoder_args {decoder_args} not accepted by x_transformers.Decoder: {exc}") from None
        self.net = TransformerWrapper(
            num_tokens=cfg.num_tokens, max_seq_len=cfg.max_seq_len, attn_layers=layers, emb_dropout=cfg.emb_dropout)
        if not self.net.can_cache_kv:
            raise ConfigError(f"decoder_args {decoder_args} make the decoder unable to use a key/value cache")
        self.num_tokens = cfg.num_tokens
        self.max_seq_len = cfg.max_seq_len
        # The lean step (models/steps.py), built on first use; False once found not to apply.
        self._lean: LeanStep | None | bool = None

    def forward(self, tokens: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits [B, T, V] for the token after each position of ``tokens`` [B, T].

        ``memory_mask`` [B, N] (True = attend) hides padded image patches from cross-attention.
        """
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"token sequence of length {tokens.shape[1]} exceeds max_seq_len {self.max_seq_len}")
        return self.net(tokens, context=memory, context_mask=memory_mask)

    def decoding_step(self, memory: Tensor, *, fast: bool = True, use_cache: bool = True) -> decoding.DecoderStep:
        """The step decoding loops use for ``memory``: the lean one where it applies, else the library's."""
        if not use_cache:
            return UncachedStep(self.net)
        if self.training or not fast:  # dropout: only the library's step applies it
            return LibraryStep(self.net)
        if self._lean is None:
            self._lean = LeanStep.build(self.net, memory[:1]) or False
        return self._lean or LibraryStep(self.net)

    def generate(self, memory: Tensor, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop_at_eos: bool = True,
                 use_cache: bool = True, fast: bool = True, generator: torch.Generator | None = None,
                 memory_mask: Tensor | None = None) -> Generation:
        """Greedy (temperature 0) or sampled decoding from BOS; see :func:`pix2tex.models.decoding.generate`.

        ``use_cache=False`` re-runs the whole prefix each step (slow; a reference); ``fast=False``
        uses x-transformers' own cached step instead of the lean one.
        """
        steps = check_max_new_tokens(max_new_tokens, self.max_seq_len)
        return decoding.generate(self.decoding_step(memory, fast=fast, use_cache=use_cache), memory, steps=steps,
                                 memory_mask=memory_mask, temperature=temperature, top_k=top_k, top_p=top_p,
                                 stop_at_eos=stop_at_eos, generator=generator)

    def beam_search(self, memory: Tensor, *, beam_size: int, max_new_tokens: int | None = None,
                    length_penalty: float = 1.0, fast: bool = True, memory_mask: Tensor | None = None) -> Generation:
        """Length-normalised beam search; see :func:`pix2tex.models.decoding.beam_search`."""
        steps = check_max_new_tokens(max_new_tokens, self.max_seq_len)
        return decoding.beam_search(self.decoding_step(memory, fast=fast), memory, beam_size=beam_size, steps=steps,
                                    memory_mask=memory_mask, length_penalty=length_penalty)
