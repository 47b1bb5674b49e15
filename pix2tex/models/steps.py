"""A lean cached decoder step over the x-transformers decoder's own weights.

Why this exists: x-transformers runs a cached step through its general-purpose layer code, which
checks dozens of options and builds intermediate records in Python on every call.  For the
seed-sized model at batch 1 that bookkeeping costs about as much as the arithmetic itself (see
docs/RESULTS.md, "KV cache vs. no cache").  The step here does only the arithmetic that a standard
pre-norm decoder needs -- embeddings, LayerNorm, attention against a preallocated key/value
buffer, feed-forward, logits -- reading the library modules' parameters in place (no copies, so a
model trained further stays in sync).

It covers the decoders this project builds (pre-norm LayerNorm, absolute positions, plain
multi-head attention with or without attention-on-attention, GELU or GLU feed-forward).  Anything
else -- or any difference from the library's own step, which :meth:`FastStep.build` checks
numerically before the fast step is used -- means ``build`` returns None and decoding keeps the
library's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from x_transformers import TransformerWrapper
from x_transformers.x_transformers import (AbsolutePositionalEmbedding, Attention, FeedForward, LayerNorm,
                                           Residual, TokenEmbedding)

__all__ = ["FastCache", "FastStep"]

SELF, CROSS, FF = "a", "c", "f"  # x-transformers' layer type letters


@dataclass
class FastCache:
    """Keys/values of every attention layer; self-attention buffers hold ``length`` valid positions."""

    self_kv: list[tuple[Tensor, Tensor]]  # [B, H, capacity, D] each, filled up to `length`
    cross_kv: list[tuple[Tensor, Tensor]]  # [B, H, N, D] each: the image memory, projected once
    length: int
    cross_mask: Tensor | None = None  # [B, 1, 1, N] bool: memory rows to attend to (None: all)

    def reorder(self, index: Tensor) -> None:
        """Rows ``index`` [B'] of the self-attention cache become the new rows (beam search)."""
        self.self_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.self_kv]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, index)

    def keep_rows(self, index: Tensor) -> None:
        """Only rows ``index`` [B'] go on decoding: drop the others from every buffer, memory's too."""
        self.reorder(index)
        self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]


@dataclass
class _Layer:
    kind: str
    norm: LayerNorm
    block: nn.Module  # Attention or FeedForward


class FastStep:
    """``(tokens [B, 1], memory, cache) -> (logits [B, V], cache)`` without the library's per-step bookkeeping."""

    def __init__(self, net: TransformerWrapper, layers: list[_Layer]):
        self.net = net
        self.layers = layers
        self.final_norm = net.attn_layers.final_norm
        self.pos_scale = net.pos_emb.scale
        self.max_seq_len = net.max_seq_len

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def build(cls, net: TransformerWrapper, check_memory: Tensor) -> "FastStep | None":
        """A fast step for ``net`` if its structure is covered and it reproduces the library's step."""
        layers = _covered_layers(net)
        if layers is None:
            return None
        fast = cls(net, layers)
        return fast if fast._agrees_with_library(check_memory) else None

    @torch.no_grad()
    def _agrees_with_library(self, memory: Tensor, steps: int = 3) -> bool:
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(4, self.net.num_tokens, (memory.shape[0], steps), generator=generator)
        tokens = tokens.to(memory.device)
        cache, lib_cache = None, None
        for i in range(steps):
            ours, cache = self(tokens[:, i:i + 1], memory, cache)
            theirs, lib_cache = self.net(tokens[:, i:i + 1], context=memory, cache=lib_cache,
                                         input_not_include_cache=True, return_intermediates=True)
            theirs = theirs[:, -1]
            scale = max(1.0, float(theirs.abs().max()))
            if not torch.allclose(ours, theirs, rtol=0.0, atol=1e-4 * scale):
                return False
        return True

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, tokens: Tensor, memory: Tensor, cache: FastCache | None,
                 memory_mask: Tensor | None = None) -> tuple[Tensor, FastCache]:
        if tokens.shape[1] != 1:
            raise ValueError(f"the fast step decodes one token at a time, got {tokens.shape[1]}")
        if cache is None:
            cache = self._new_cache(memory)
            cache.cross_mask = None if memory_mask is None else memory_mask[:, None, None, :]
        pos = cache.length
        if pos >= self.max_seq_len:
            raise ValueError(f"sequence length {pos + 1} exceeds max_seq_len {self.max_seq_len}")
        net = self.net
        x = net.token_emb.emb(tokens) + net.pos_emb.emb.weight[pos] * self.pos_scale
        self_i = cross_i = 0
        for layer in self.layers:
            h = _layer_norm(layer.norm, x)
            if layer.kind == FF:
                x = x + layer.block.ff(h)
                continue
            attn: Attention = layer.block
            q = _heads(F.linear(h, attn.to_q.weight), attn.heads)
            mask = None  # one query: no later position to hide from it
            if layer.kind == SELF:
                k_buf, v_buf = cache.self_kv[self_i]
                k_buf[:, :, pos] = _heads(F.linear(h, attn.to_k.weight), attn.heads)[:, :, 0]
                v_buf[:, :, pos] = _heads(F.linear(h, attn.to_v.weight), attn.heads)[:, :, 0]
                k, v = k_buf[:, :, : pos + 1], v_buf[:, :, : pos + 1]
                self_i += 1
            else:
                k, v = cache.cross_kv[cross_i]
                mask = cache.cross_mask
                cross_i += 1
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + attn.to_out(out.transpose(1, 2).reshape(out.shape[0], 1, -1))
        x = _layer_norm(self.final_norm, x)
        cache.length = pos + 1
        return net.to_logits(x)[:, -1], cache

    def _new_cache(self, memory: Tensor) -> FastCache:
        batch = memory.shape[0]
        self_kv, cross_kv = [], []
        for layer in self.layers:
            if layer.kind == FF:
                continue
            attn: Attention = layer.block
            head_dim = attn.to_q.out_features // attn.heads
            if layer.kind == SELF:
                shape = (batch, attn.heads, self.max_seq_len, head_dim)
                self_kv.append((memory.new_zeros(shape), memory.new_zeros(shape)))
            else:
                cross_kv.append((_heads(F.linear(memory, attn.to_k.weight), attn.heads),
                                 _heads(F.linear(memory, attn.to_v.weight), attn.heads)))
        return FastCache(self_kv=self_kv, cross_kv=cross_kv, length=0)


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
    for kind, (norms, block, residual) in zip(net.attn_layers.layer_types, net.attn_layers.layers):
        pre, post_branch, post_main = norms
        if not isinstance(pre, LayerNorm) or post_branch is not None or post_main is not None:
            return None  # only pre-norm
        if type(residual) is not Residual or residual.residual_scale is not None \
                or residual.scale_residual_constant != 1:
            return None
        if kind == FF and isinstance(block, FeedForward):
            layers.append(_Layer(kind, pre, block))
        elif kind in (SELF, CROSS) and isinstance(block, Attention) and _plain_attention(block):
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
