"""The decoder steps over x-transformers' modules: the only file that reads the library's internals.

Three implementations of :class:`pix2tex.models.decoding.DecoderStep` over the same weights:

- :class:`LeanStep`, the default: only the arithmetic a standard pre-norm decoder needs --
  embeddings, LayerNorm, attention against a preallocated key/value buffer, feed-forward, logits --
  reading the library modules' parameters in place (no copies, so a model trained further stays
  in sync).  x-transformers' own cached step checks dozens of options and builds intermediate
  records in Python on every call; for the seed-sized model at batch 1 that bookkeeping costs
  about as much as the arithmetic (docs/RESULTS.md, "KV cache vs. no cache").  It covers the
  decoders this project builds (pre-norm LayerNorm, absolute positions, plain multi-head attention
  with or without attention-on-attention, GELU or GLU feed-forward); anything else -- or any
  difference from the library's step, which :meth:`LeanStep.build` checks numerically -- means
  ``build`` returns None and decoding keeps the library's step.  The ONNX graphs are traced from
  this step (:class:`LeanCrossGraph`, :class:`LeanStepGraph`), so the exported arithmetic is the one
  PyTorch runs.
- :class:`LibraryStep`: x-transformers' cached step (training mode, and decoders the lean step
  does not cover).
- :class:`UncachedStep`: the whole prefix again at every step, as the public pix2tex decodes (a
  reference for tests and benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import (
    AbsolutePositionalEmbedding,
    Attention,
    FeedForward,
    LayerIntermediates,
    LayerNorm,
    Residual,
    TokenEmbedding,
)

from pix2tex.models.decoding import FlatCache

__all__ = ["LeanStep", "LibraryStep", "UncachedStep", "LeanCrossGraph", "LeanStepGraph", "SELF", "CROSS"]

SELF, CROSS = "self", "cross"  # attention layer kinds, in the order of the decoder's layers
_SELF, _CROSS, _FF = "a", "c", "f"  # x-transformers' layer type letters


@dataclass
class _Layer:
    kind: str
    norm: LayerNorm
    block: nn.Module  # Attention or FeedForward


class LeanStep:
    """The decoder's arithmetic only; see the module's docstring."""

    def __init__(self, net: TransformerWrapper, layers: list[_Layer]):
        self.net = net
        self.layers = layers
        self.final_norm = net.attn_layers.final_norm
        self.pos_scale = net.pos_emb.scale
        self.max_seq_len = net.max_seq_len
        self.num_tokens = net.num_tokens

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, net: TransformerWrapper, check_memory: Tensor) -> LeanStep | None:
        """A lean step for ``net`` if its structure is covered and it reproduces the library's step."""
        layers = _covered_layers(net)
        if layers is None:
            return None
        lean = cls(net, layers)
        return lean if lean._agrees_with_library(check_memory) else None

    @torch.no_grad()
    def _agrees_with_library(self, memory: Tensor, steps: int = 3) -> bool:
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(4, self.net.num_tokens, (memory.shape[0], steps), generator=generator)
        tokens = tokens.to(memory.device)
        library = LibraryStep(self.net)
        ours, theirs = self.start(memory, None), library.start(memory, None)
        for i in range(steps):
            a = self(tokens[:, i:i + 1], ours)
            b = library(tokens[:, i:i + 1], theirs)
            scale = max(1.0, float(b.abs().max()))
            if not torch.allclose(a, b, rtol=0.0, atol=1e-4 * scale):
                return False
        return True

    @property
    def kinds(self) -> list[str]:
        """The kind, "self" or "cross", of each attention layer in order (the ONNX graphs' cache layout)."""
        return [SELF if layer.kind == _SELF else CROSS for layer in self.layers if layer.kind != _FF]

    # -- the step ------------------------------------------------------------------------------
    def cross_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Keys and values of ``memory`` [B, N, dim] for every cross-attention layer (computed once)."""
        out = []
        for layer in self.layers:
            if layer.kind == _CROSS:
                attn: Attention = layer.block
                out.append((_heads(F.linear(memory, attn.to_k.weight), attn.heads),
                            _heads(F.linear(memory, attn.to_v.weight), attn.heads)))
        return out

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> FlatCache:
        """Empty self-attention buffers for the longest sequence, and the projected memory."""
        batch = memory.shape[0]
        self_kv = []
        for layer in self.layers:
            if layer.kind == _SELF:
                attn: Attention = layer.block
                shape = (batch, attn.heads, self.max_seq_len, attn.to_q.out_features // attn.heads)
                self_kv.append((memory.new_zeros(shape), memory.new_zeros(shape)))
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        return FlatCache(self_kv=self_kv, cross_kv=self.cross_kv(memory), length=0, cross_mask=mask)

    def __call__(self, tokens: Tensor, cache: FlatCache) -> Tensor:
        """Logits [B, V] after ``tokens`` [B, 1]; their keys/values are written into the cache's buffers."""
        if tokens.shape[1] != 1:
            raise ValueError(f"the lean step decodes one token at a time, got {tokens.shape[1]}")
        pos = cache.length
        if pos >= self.max_seq_len:
            raise ValueError(f"sequence length {pos + 1} exceeds max_seq_len {self.max_seq_len}")

        def past(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            k_buf, v_buf = cache.self_kv[i]
            k_buf[:, :, pos] = k[:, :, 0]
            v_buf[:, :, pos] = v[:, :, 0]
            return k_buf[:, :, : pos + 1], v_buf[:, :, : pos + 1]

        position = self.net.pos_emb.emb.weight[pos]
        logits = self.forward(tokens, position, past, cache.cross_kv, cache.cross_mask)
        cache.length = pos + 1
        return logits

    def forward(self, tokens: Tensor, position: Tensor, past: Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]],
                cross_kv: list[tuple[Tensor, Tensor]], cross_mask: Tensor | None) -> Tensor:
        """The decoder on one new token per row.  ``past(i, k, v)`` stores self-attention layer i's
        new key/value [B, H, 1, D] and returns all of them; ``position`` is the new token's
        position embedding row."""
        net = self.net
        x = net.token_emb.emb(tokens) + position * self.pos_scale
        self_i = cross_i = 0
        for layer in self.layers:
            h = _layer_norm(layer.norm, x)
            if layer.kind == _FF:
                x = x + layer.block.ff(h)
                continue
            attn: Attention = layer.block
            q = _heads(F.linear(h, attn.to_q.weight), attn.heads)
            mask = None  # one query: no later position to hide from it
            if layer.kind == _SELF:
                k, v = past(self_i, _heads(F.linear(h, attn.to_k.weight), attn.heads),
                            _heads(F.linear(h, attn.to_v.weight), attn.heads))
                self_i += 1
            else:
                k, v = cross_kv[cross_i]
                mask = cross_mask
                cross_i += 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + attn.to_out(out.transpose(1, 2).reshape(out.shape[0], 1, -1))
        return net.to_logits(_layer_norm(self.final_norm, x))[:, -1]


class LeanCrossGraph(nn.Module):
    """For the ONNX export: memory [B, N, dim] -> keys and values of every cross-attention layer."""

    def __init__(self, lean: LeanStep):
        super().__init__()
        self.lean = lean
        self.net = lean.net  # registered, so the export sees the weights as parameters

    def forward(self, memory: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for kv in self.lean.cross_kv(memory) for t in kv)


class LeanStepGraph(nn.Module):
    """For the ONNX export: (tokens [B, 1], every attention layer's past keys/values) -> (logits,
    each self-attention layer's keys/values with the new token's appended).

    The same :meth:`LeanStep.forward` as PyTorch runs, with the past concatenated instead of
    written into a buffer; the new token's position is the length of the past.
    """

    def __init__(self, lean: LeanStep):
        super().__init__()
        self.lean, self.kinds = lean, lean.kinds
        self.net = lean.net
        self.first_self = self.kinds.index(SELF)

    def forward(self, tokens: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        pairs = [(past[2 * j], past[2 * j + 1]) for j in range(len(self.kinds))]
        self_past = [kv for kind, kv in zip(self.kinds, pairs, strict=True) if kind == SELF]
        cross_kv = [kv for kind, kv in zip(self.kinds, pairs, strict=True) if kind == CROSS]
        present: list[Tensor] = []

        def grow(i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            k, v = torch.cat((self_past[i][0], k), dim=2), torch.cat((self_past[i][1], v), dim=2)
            present.extend((k, v))
            return k, v

        length = self_past[0][0].shape[2]  # traced as a dynamic size: the position of the new token
        position = F.embedding(torch.zeros_like(tokens[:, 0]) + length, self.net.pos_emb.emb.weight)[:, None]
        logits = self.lean.forward(tokens, position, grow, cross_kv, None)
        return (logits, *present)


class _RowCache:
    """The library's cache plus what its step needs again each time (memory, mask)."""

    def __init__(self, memory: Tensor, mask: Tensor | None):
        self.memory, self.mask = memory, mask
        self.inters: LayerIntermediates | None = None
        self.prefix: Tensor | None = None  # UncachedStep: the tokens so far

    def reorder(self, index: Tensor) -> None:
        if self.inters is not None:
            for inter in self.inters.attn_intermediates:
                if inter.layer_type == _SELF:  # beams of one image share their cross-attention rows
                    inter.cached_kv = tuple(t.index_select(0, index) for t in inter.cached_kv)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, index)

    def keep_rows(self, index: Tensor) -> None:
        self.reorder(index)
        if self.inters is not None:
            for inter in self.inters.attn_intermediates:
                if inter.layer_type == _CROSS:
                    inter.cached_kv = tuple(t.index_select(0, index) for t in inter.cached_kv)
        self.memory = self.memory.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)


class LibraryStep:
    """x-transformers' own cached step: after the first call only the newest token runs, and the
    cross-attention keys/values of the memory come from the cache (the library then cuts the
    context to zero length)."""

    def __init__(self, net: TransformerWrapper):
        self.net, self.num_tokens = net, net.num_tokens

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> _RowCache:
        return _RowCache(memory, memory_mask)

    def __call__(self, tokens: Tensor, cache: _RowCache) -> Tensor:
        logits, cache.inters = self.net(tokens, context=cache.memory, context_mask=cache.mask, cache=cache.inters,
                                        input_not_include_cache=True, return_intermediates=True)
        return logits[:, -1]


class UncachedStep:
    """The whole prefix through the decoder at every step (no key/value cache): slow, a reference."""

    def __init__(self, net: TransformerWrapper):
        self.net, self.num_tokens = net, net.num_tokens

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> _RowCache:
        return _RowCache(memory, memory_mask)

    def __call__(self, tokens: Tensor, cache: _RowCache) -> Tensor:
        cache.prefix = tokens if cache.prefix is None else torch.cat((cache.prefix, tokens), dim=1)
        return self.net(cache.prefix, context=cache.memory, context_mask=cache.mask)[:, -1]


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, n, H*D] -> [B, H, n, D]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _layer_norm(norm: LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.ln.normalized_shape, eps=norm.ln.eps) * (norm.gamma + float(norm.unit_offset))


def _covered_layers(net: TransformerWrapper) -> list[_Layer] | None:
    """The decoder's layers if every part is one this step implements, else None."""
    if not (isinstance(net.token_emb, TokenEmbedding) and not net.token_emb.l2norm_embed
            and isinstance(net.pos_emb, AbsolutePositionalEmbedding) and not net.pos_emb.l2norm_embed
            and _is_identity(net.post_emb_norm) and _is_identity(net.project_emb)
            and isinstance(net.attn_layers.final_norm, LayerNorm) and isinstance(net.to_logits, nn.Linear)):
        return None
    layers = []
    for kind, (norms, block, residual) in zip(net.attn_layers.layer_types, net.attn_layers.layers, strict=True):
        pre, post_branch, post_main = norms
        if not isinstance(pre, LayerNorm) or post_branch is not None or post_main is not None:
            return None  # only pre-norm
        if type(residual) is not Residual or residual.residual_scale is not None \
                or residual.scale_residual_constant != 1:
            return None
        if kind == _FF and isinstance(block, FeedForward):
            layers.append(_Layer(kind, pre, block))
        elif kind in (_SELF, _CROSS) and isinstance(block, Attention) and _plain_attention(block):
            layers.append(_Layer(kind, pre, block))
        else:
            return None
    return layers


def _is_identity(module: nn.Module) -> bool:
    # x-transformers takes its Identity from torch_einops_utils, not torch.nn.
    return type(module).__name__ == "Identity" and not any(True for _ in module.parameters())


def _plain_attention(attn: Attention) -> bool:
    """Multi-head attention with bias-free q/k/v projections and the same head count for keys and values."""
    return (all(isinstance(getattr(attn, name, None), nn.Linear) and getattr(attn, name).bias is None
                for name in ("to_q", "to_k", "to_v"))
            and attn.kv_heads == attn.heads and attn.num_mem_kv == 0
            and attn.to_q.out_features == attn.to_k.out_features == attn.to_v.out_features)
