"""Decoding, written once: greedy/sampled generation and beam search over any decoder step.

A *step* turns the newest token of every sequence into next-token logits, keeping what it needs
about the past in a *cache* it made itself::

    cache = step.start(memory, memory_mask)     # memory [B, N, dim]; mask [B, N] (True = attend) or None
    logits = step(tokens, cache)                # tokens [B, 1] -> logits [B, V]; the cache grows in place
    cache.reorder(index)                        # beam search: rows of the self-attention past follow their parents
    cache.keep_rows(index)                      # rows that finished leave the batch, from every buffer

Four steps implement it: the lean step and x-transformers' own cached step over the PyTorch
weights (:mod:`pix2tex.models.steps`), the uncached reference that re-runs the whole prefix, and
onnxruntime's graphs (:mod:`pix2tex.onnx_engine`), which are exported from the lean step.  The lean
and ONNX steps share one cache layout, :class:`FlatCache`.

Generation never emits PAD or BOS (they are never training targets), and the confidence it
reports is the mean log-probability, under the model's own distribution (temperature 1, no
filtering), of the tokens it chose, EOS included.

The rules both this module and the ONNX engine's loops follow (when a looping reading stops, how
it is cut, the checks of the settings) are in :mod:`pix2tex.decoding_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from pix2tex.decoding_rules import (
    LOOP_MIN_TOKENS,
    LOOP_WINDOW,
    Hypotheses,
    add_finished,
    check_beam,
    check_max_new_tokens,
    check_sampling,
    cut_loop,
    looping,
    mark_done,
)
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "Generation", "FlatCache", "StepCache", "DecoderStep", "generate", "beam_search", "check_max_new_tokens",
    "top_k_filter", "top_p_filter", "generation_logprobs", "choose_tokens", "cut_loop",
]

@dataclass
class Generation:
    """Decoded ids and a per-sequence confidence."""

    ids: Tensor  # [B, L] long: generated tokens without BOS, PAD after the first EOS
    logprob: Tensor  # [B] float: mean log-probability of the chosen tokens, EOS included


class StepCache(Protocol):
    def reorder(self, index: Tensor) -> None: ...

    def keep_rows(self, index: Tensor) -> None: ...


class DecoderStep(Protocol):
    num_tokens: int

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> StepCache: ...

    def __call__(self, tokens: Tensor, cache: StepCache) -> Tensor: ...


@dataclass
class FlatCache:
    """Keys/values of every attention layer, flat: the lean step's and the ONNX graphs' cache.

    ``self_kv`` [B, H, ≥length, D] per self-attention layer holds the past (the lean step writes
    into a preallocated buffer, the ONNX step gets a new tensor each step); ``cross_kv`` [B, H, N, D]
    per cross-attention layer is the image memory, projected once.
    """

    self_kv: list[tuple[Tensor, Tensor]]
    cross_kv: list[tuple[Tensor, Tensor]]
    length: int = 0
    cross_mask: Tensor | None = None  # [B, 1, 1, N] bool: memory rows to attend to (None: all)

    def reorder(self, index: Tensor) -> None:
        """Rows ``index`` [B'] of the self-attention past become the new rows (beam search: beams of
        one image share their memory, so the cross-attention rows are equal already)."""
        self.self_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.self_kv]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask.index_select(0, index)

    def keep_rows(self, index: Tensor) -> None:
        """Only rows ``index`` [B'] go on decoding: drop the others from every buffer, memory's too."""
        self.reorder(index)
        self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]


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
    """Nucleus filter: keep the fewest most likely tokens whose probabilities sum to >= ``p``.

    The most likely token always stays.
    """
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


# -- the two decoding loops ---------------------------------------------------------------------

@torch.no_grad()
def generate(step: DecoderStep, memory: Tensor, *, steps: int, memory_mask: Tensor | None = None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop_at_eos: bool = True, generator: torch.Generator | None = None, shrink: bool = True) -> Generation:
    """Greedy (temperature 0) or sampled decoding from BOS for every memory row, ``steps`` tokens at most.

    A sequence ends at its EOS and is PAD-filled afterwards; the loop ends when all have ended.
    ``stop_at_eos=False`` always produces ``steps`` tokens (EOS is then an ordinary token).  With
    ``shrink``, greedy sequences that ended leave the batch (and the cache), so a batch costs
    what its sequences need, not its longest one times its size; sampling keeps every row, so a
    seeded generator draws the same numbers whatever the batch does.
    """
    check_sampling(temperature, top_k, top_p)
    batch, device = memory.shape[0], memory.device
    out = torch.full((batch, steps), PAD_ID, dtype=torch.long, device=device)
    logprob_sum = torch.zeros(batch, device=device)
    length = torch.zeros(batch, device=device)
    rows: Tensor | slice = slice(None)  # the batch rows of the sequences still decoding (all, until one leaves)
    last = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    shrink = shrink and stop_at_eos and temperature == 0.0
    cache = step.start(memory, memory_mask)
    width = 0
    for t in range(steps):
        logprobs = generation_logprobs(step(last, cache))
        nxt = choose_tokens(logprobs, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        nxt = nxt.masked_fill(ended, PAD_ID)
        chosen = logprobs.gather(1, nxt[:, None]).squeeze(1)
        logprob_sum[rows] += chosen.masked_fill(ended, 0.0)
        length[rows] += (~ended).float()
        out[rows, t] = nxt
        width = t + 1
        if stop_at_eos:
            ended = ended | (nxt == EOS_ID)
            if width >= LOOP_MIN_TOKENS:
                ended = ended | looping(out[rows, max(0, width - LOOP_WINDOW) : width])
            if bool(ended.all()):
                break
            if shrink and bool(ended.any()):
                keep = (~ended).nonzero().squeeze(1)
                rows = torch.arange(batch, device=device)[rows][keep]
                nxt, ended = nxt[keep], ended[keep]
                cache.keep_rows(keep)
        last = nxt[:, None]
    out = out[:, :width]
    if stop_at_eos:  # a sequence without EOS was stopped as a loop or ran to the limit
        _cut_loops(out, (out != EOS_ID).all(dim=1))
    return Generation(ids=out, logprob=logprob_sum / length)


def _cut_loops(ids: Tensor, rows: Tensor) -> None:
    """Cut the repeating tails of the ``rows`` (a [B] mask) of ``ids`` [B, L] in place (PAD after)."""
    for b in rows.nonzero().flatten().tolist():
        seq = ids[b][ids[b] != PAD_ID].tolist()
        ids[b, len(cut_loop(seq)):] = PAD_ID


@torch.no_grad()
def beam_search(step: DecoderStep, memory: Tensor, *, beam_size: int, steps: int, memory_mask: Tensor | None = None,
                length_penalty: float = 1.0) -> Generation:
    """Length-normalised beam search, batched over memory rows, ``steps`` tokens at most.

    A hypothesis scores ``sum(logprob) / len ** length_penalty`` (len counts EOS).  An EOS among
    the ``beam_size`` best candidates of a step finishes a hypothesis (the best ``beam_size``
    finished ones are kept); the other ``beam_size`` best candidates stay open.  An image is done
    when it has ``beam_size`` finished hypotheses and none of its open ones scores better, at its
    current length, than the worst of them (exact for ``length_penalty=0``, the usual heuristic
    otherwise); hypotheses still open after ``steps`` finish there without EOS.  The best finished
    one is returned, with its mean token log-probability as ``logprob``.  ``beam_size=1`` is
    greedy decoding.
    """
    check_beam(beam_size, length_penalty)
    batch, k, vocab, device = memory.shape[0], beam_size, step.num_tokens, memory.device
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
    cache = step.start(memory, memory_mask)
    for t in range(steps):
        logits = step(tokens[:, -1:], cache)
        candidates = (scores[..., None] + generation_logprobs(logits).view(batch, k, vocab)).view(batch, k * vocab)
        cand_sum, cand_idx = candidates.topk(min(2 * k, k * vocab), dim=1)
        cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
        length = t + 1
        _finish_eos(finished, done, tokens, cand_sum[:, :k], cand_beam[:, :k], cand_token[:, :k],
                    length ** length_penalty, k)
        live_sum, pick = cand_sum.masked_fill(cand_token == EOS_ID, float("-inf")).topk(k, dim=1)
        mark_done(finished, done, (live_sum[:, 0] / length ** length_penalty).tolist(), k)
        if all(done):
            break
        parent = (row_base + cand_beam.gather(1, pick)).view(-1)
        tokens = torch.cat((tokens.index_select(0, parent), cand_token.gather(1, pick).view(-1, 1)), dim=1)
        cache.reorder(parent)
        scores = live_sum
    else:  # ran out of steps: open hypotheses finish without EOS
        for b in range(batch):
            if done[b]:
                continue
            for j in range(k):
                total = float(scores[b, j])
                if total > float("-inf"):
                    finished[b].append((total / steps ** length_penalty, total, tokens[b * k + j, 1:].tolist()))
    best = _best_hypotheses(finished, device)
    _cut_loops(best.ids, (best.ids != EOS_ID).all(dim=1))
    return best


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
        add_finished(finished, b, total, norm, ids, k)


def _best_hypotheses(finished: Hypotheses, device: torch.device) -> Generation:
    """The best-scoring finished hypothesis per image, as a PAD-filled Generation."""
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    width = max(len(ids) for _, _, ids in best)
    ids = torch.full((len(best), width), PAD_ID, dtype=torch.long, device=device)
    for b, (_, _, seq) in enumerate(best):
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
    logprob = torch.tensor([total / len(seq) for _, total, seq in best], device=device)
    return Generation(ids=ids, logprob=logprob)
