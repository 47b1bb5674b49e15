"""Transformer decoder: LaTeX token ids conditioned on the image encoder's memory.

The network is x-transformers' :class:`~x_transformers.TransformerWrapper` around a causal
:class:`~x_transformers.Decoder` with cross-attention.  Decoding uses the library's key/value
cache: after the first step a decoder step runs only the newest token, and the cross-attention
keys/values of the image memory, computed once in the first step, are reused from the cache
(x-transformers drops the context to zero length when a cache is given).

:meth:`TextDecoder.step` -- ``(new tokens, memory, cache) -> (next-token logits, cache)`` -- is
the one function every decoding loop goes through, so a later ONNX export of "one decoder step"
has a single place to wrap.

Generation never emits PAD or BOS (they are never training targets), and the confidence it
reports is the mean log-probability, under the model's own distribution (temperature 1, no
filtering), of the tokens it chose, EOS included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from x_transformers import Decoder, TransformerWrapper
from x_transformers.x_transformers import LayerIntermediates

from pix2tex.config import ConfigError, ModelConfig
from pix2tex.models.fast_step import FastCache, FastStep
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "Generation", "TextDecoder", "top_k_filter", "top_p_filter", "generation_logprobs", "choose_tokens",
    "reorder_cache",
]


@dataclass
class Generation:
    """Decoded ids and a per-sequence confidence."""

    ids: Tensor  # [B, L] long: generated tokens without BOS, PAD after the first EOS
    logprob: Tensor  # [B] float: mean log-probability of the chosen tokens, EOS included


Hypotheses = list[list[tuple[float, float, list[int]]]]  # beam search, per image: (score, logprob sum, ids)


# -- pure helpers for choosing tokens ---------------------------------------------------------

def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """``logits`` [..., V] with everything below the k-th largest value set to -inf (ties at the k-th are kept)."""
    if k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the fewest most likely tokens whose probabilities sum to >= ``p`` (the best always stays)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits  # keep everything (cumulative sums may round to 1 before the last token)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens ranked above it already reach p.
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def generation_logprobs(logits: Tensor) -> Tensor:
    """Log-probabilities [..., V] of the next token with PAD and BOS excluded (never valid outputs)."""
    logits = logits.float().clone()
    logits[..., PAD_ID] = float("-inf")
    logits[..., BOS_ID] = float("-inf")
    return logits.log_softmax(dim=-1)


def choose_tokens(logprobs: Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None) -> Tensor:
    """Next token per row of ``logprobs`` [B, V]: argmax at temperature 0, else a sample after top-k/top-p."""
    if temperature == 0.0:
        return logprobs.argmax(dim=-1)
    scores = logprobs / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None:
        scores = top_p_filter(scores, top_p)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def reorder_cache(cache: LayerIntermediates | FastCache, index: Tensor) -> None:
    """Reorder the self-attention key/value cache rows in place (``index`` [B*k]: new row -> old row).

    Cross-attention caches are left alone: beams of one image share the same memory, and a beam's
    parent is always a beam of the same image, so those rows are equal already.
    """
    if isinstance(cache, FastCache):
        cache.reorder(index)
        return
    for inter in cache.attn_intermediates:
        if inter.layer_type == "a":
            inter.cached_kv = tuple(t.index_select(0, index) for t in inter.cached_kv)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


# -- the decoder ------------------------------------------------------------------------------

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
        # The lean step (models/fast_step.py), built on first use; False once found not to apply.
        self._fast_step: FastStep | None | bool = None

    def forward(self, tokens: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits [B, T, V] for the token after each position of ``tokens`` [B, T].

        ``memory_mask`` [B, N] (True = attend) hides padded image patches from cross-attention.
        """
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"token sequence of length {tokens.shape[1]} exceeds max_seq_len {self.max_seq_len}")
        return self.net(tokens, context=memory, context_mask=memory_mask)

    def step(self, tokens: Tensor, memory: Tensor, cache: LayerIntermediates | None,
             memory_mask: Tensor | None = None) -> tuple[Tensor, LayerIntermediates]:
        """One cached decoding step: logits [B, V] after the new ``tokens`` [B, n], and the cache extended by them.

        ``cache`` is None for the first step (then ``tokens`` is the prompt, usually just BOS).
        """
        logits, cache = self.net(tokens, context=memory, context_mask=memory_mask, cache=cache,
                                 input_not_include_cache=True, return_intermediates=True)
        return logits[:, -1], cache

    def _stepper(self, memory: Tensor, fast: bool):
        """The step function decoding loops use: the lean one where it applies, else :meth:`step`."""
        if self.training:  # dropout: only the library's step applies it
            return self.step
        if fast and self._fast_step is None:
            self._fast_step = FastStep.build(self.net, memory[:1]) or False
        return self._fast_step if fast and self._fast_step else self.step

    def _max_new_tokens(self, max_new_tokens: int | None) -> int:
        limit = self.max_seq_len - 1  # BOS takes the first position
        if max_new_tokens is None:
            return limit
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 0 < max_new_tokens <= limit:
            raise ValueError(
                f"max_new_tokens must be an integer in 1..{limit} (max_seq_len - 1), got {max_new_tokens!r}")
        return max_new_tokens

    @torch.no_grad()
    def generate(self, memory: Tensor, *, max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, stop_at_eos: bool = True,
                 use_cache: bool = True, fast: bool = True, generator: torch.Generator | None = None,
                 memory_mask: Tensor | None = None) -> Generation:
        """Greedy (temperature 0) or sampled decoding from BOS for every memory row.

        A sequence ends at its EOS and is PAD-filled afterwards; the loop ends when all have
        ended.  ``stop_at_eos=False`` always produces ``max_new_tokens`` tokens (EOS is then an
        ordinary token).  ``use_cache=False`` re-runs the whole prefix each step (slow; a reference).
        """
        steps = self._max_new_tokens(max_new_tokens)
        _check_sampling(temperature, top_k, top_p)
        batch, device = memory.shape[0], memory.device
        out = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)
        logprob_sum = torch.zeros(batch, device=device)
        length = torch.zeros(batch, device=device)
        rows = torch.arange(batch, device=device)  # the batch row of each sequence still decoding
        last = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)
        prefix = last  # the whole prefix, for use_cache=False
        ended = torch.zeros(batch, dtype=torch.bool, device=device)
        cache, step = None, self._stepper(memory, fast) if use_cache else None
        # Greedy rows that reached EOS leave the batch (the lean step's cache shrinks with them): a
        # batch then costs what its sequences need, not its longest one times the batch size.
        # Sampling keeps every row, so a seeded generator draws the same numbers as before.
        shrink = stop_at_eos and temperature == 0.0 and isinstance(step, FastStep)
        width = 0
        for t in range(steps):
            if use_cache:
                logits, cache = step(last, memory, cache, memory_mask)
            else:
                logits = self.net(prefix, context=memory, context_mask=memory_mask)[:, -1]
            logprobs = generation_logprobs(logits)
            nxt = choose_tokens(logprobs, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            nxt = nxt.masked_fill(ended, PAD_ID)
            chosen = logprobs.gather(1, nxt[:, None]).squeeze(1)
            logprob_sum[rows] += chosen.masked_fill(ended, 0.0)
            length[rows] += (~ended).float()
            out[rows, t] = nxt
            width = t + 1
            if stop_at_eos:
                ended = ended | (nxt == EOS_ID)
                if bool(ended.all()):
                    break
                if shrink and bool(ended.any()):
                    keep = (~ended).nonzero().squeeze(1)
                    rows, nxt, ended = rows[keep], nxt[keep], ended[keep]
                    cache.keep_rows(keep)
            last = nxt[:, None]
            if not use_cache:
                prefix = torch.cat((prefix, last), dim=1)
        return Generation(ids=out[:, :width], logprob=logprob_sum / length)

    @torch.no_grad()
    def beam_search(self, memory: Tensor, *, beam_size: int, max_new_tokens: int | None = None,
                    length_penalty: float = 1.0, fast: bool = True, memory_mask: Tensor | None = None) -> Generation:
        """Length-normalised beam search, batched over memory rows.

        A hypothesis scores ``sum(logprob) / len ** length_penalty`` (len counts EOS).  An EOS
        among the ``beam_size`` best candidates of a step finishes a hypothesis (the best
        ``beam_size`` finished ones are kept); the other ``beam_size`` best candidates stay open.
        An image is done when it has ``beam_size`` finished hypotheses and none of its open ones
        scores better, at its current length, than the worst of them (exact for
        ``length_penalty=0``, the usual heuristic otherwise); hypotheses still open at
        ``max_new_tokens`` finish there without EOS.  The best finished one is returned, with its
        mean token log-probability as ``logprob``.  ``beam_size=1`` is greedy decoding.
        """
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size <= 0:
            raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
        if not (length_penalty >= 0.0 and math.isfinite(length_penalty)):
            raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
        steps = self._max_new_tokens(max_new_tokens)
        batch, k, vocab, device = memory.shape[0], beam_size, self.num_tokens, memory.device
        memory = memory.repeat_interleave(k, dim=0)  # row b*k + j is beam j of image b
        if memory_mask is not None:
            memory_mask = memory_mask.repeat_interleave(k, dim=0)
        tokens = torch.full((batch * k, 1), BOS_ID, dtype=torch.long, device=device)
        # All beams start as the same BOS; only beam 0 is alive so the first step does not pick duplicates.
        scores = torch.full((batch, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        finished: Hypotheses = [[] for _ in range(batch)]
        done = [False] * batch
        row_base = torch.arange(batch, device=device)[:, None] * k
        cache, step_fn = None, self._stepper(memory, fast)
        for step in range(steps):
            logits, cache = step_fn(tokens[:, -1:], memory, cache, memory_mask)
            candidates = (scores[..., None] + generation_logprobs(logits).view(batch, k, vocab)).view(batch, k * vocab)
            cand_sum, cand_idx = candidates.topk(min(2 * k, k * vocab), dim=1)
            cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
            length = step + 1
            _finish_eos(finished, done, tokens, cand_sum[:, :k], cand_beam[:, :k], cand_token[:, :k],
                        length ** length_penalty, k)
            live_sum, pick = cand_sum.masked_fill(cand_token == EOS_ID, float("-inf")).topk(k, dim=1)
            _mark_done(finished, done, (live_sum[:, 0] / length ** length_penalty).tolist(), k)
            if all(done):
                break
            parent = (row_base + cand_beam.gather(1, pick)).view(-1)
            tokens = torch.cat((tokens.index_select(0, parent), cand_token.gather(1, pick).view(-1, 1)), dim=1)
            reorder_cache(cache, parent)
            scores = live_sum
        else:  # ran out of steps: open hypotheses finish without EOS
            for b in range(batch):
                if done[b]:
                    continue
                for j in range(k):
                    total = float(scores[b, j])
                    if total > float("-inf"):
                        finished[b].append((total / steps ** length_penalty, total, tokens[b * k + j, 1:].tolist()))
        return _best_hypotheses(finished, device)


def _finish_eos(finished: Hypotheses, done: list[bool], tokens: Tensor, top_sum: Tensor, top_beam: Tensor,
                top_token: Tensor, norm: float, k: int) -> None:
    """Record every EOS among an image's k best candidates as finished, keeping the k best finished per image."""
    if not bool((top_token == EOS_ID).any()):
        return
    for b, j in (top_token == EOS_ID).nonzero().tolist():
        total = float(top_sum[b, j])
        if done[b] or total == float("-inf"):
            continue
        ids = tokens[b * k + int(top_beam[b, j]), 1:].tolist() + [EOS_ID]
        finished[b].append((total / norm, total, ids))
        finished[b] = sorted(finished[b], key=lambda h: h[0], reverse=True)[:k]


def _mark_done(finished: Hypotheses, done: list[bool], best_open: list[float], k: int) -> None:
    """An image is done when no open hypothesis (scored at its current length) beats its k finished ones."""
    for b, hyps in enumerate(finished):
        if done[b] or not hyps:
            continue
        no_open = best_open[b] == float("-inf")
        done[b] = no_open or (len(hyps) >= k and hyps[-1][0] >= best_open[b])


def _best_hypotheses(finished: Hypotheses, device: torch.device) -> Generation:
    """The best-scoring finished hypothesis per image, as a PAD-filled Generation."""
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    width = max(len(ids) for _, _, ids in best)
    ids = torch.full((len(best), width), PAD_ID, dtype=torch.long, device=device)
    for b, (_, _, seq) in enumerate(best):
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    logprob = torch.tensor([total / len(seq) for _, total, seq in best], device=device)
    return Generation(ids=ids, logprob=logprob)
