"""Greedy decoding and beam search in numpy, over the ONNX engine's decoder step.

The light install reads without torch, so the decoding loops of :mod:`pix2tex.models.decoding`
exist a second time here, line for line the same algorithm on numpy arrays: the same stopping
rules (:mod:`pix2tex.decoding_rules`), the same exclusion of PAD and BOS, the same confidence (the
mean log-probability of the chosen tokens, EOS included), the same beam bookkeeping.  The tests
check the two against each other token for token (tests/test_export.py); sampling is left to the
torch engine (its seeded generator draws numbers numpy cannot reproduce).

A step here is :class:`pix2tex.onnx_engine.OnnxStep`: ``start(memory)`` makes an
:class:`ArrayCache`, ``step(tokens, cache)`` turns tokens [B, 1] into logits [B, V].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pix2tex.decoding_rules import (
    LOOP_MIN_TOKENS,
    LOOP_WINDOW,
    Hypotheses,
    add_finished,
    check_beam,
    cut_loop,
    looping,
    mark_done,
)
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["Generation", "ArrayCache", "ArrayStep", "generation_logprobs", "generate", "beam_search"]


@dataclass
class Generation:
    """Decoded ids and a per-sequence confidence (numpy's twin of the torch engine's Generation)."""

    ids: np.ndarray  # [B, L] int64: generated tokens without BOS, PAD after the first EOS
    logprob: np.ndarray  # [B] float32: mean log-probability of the chosen tokens, EOS included


@dataclass
class ArrayCache:
    """Keys/values of every attention layer: ``self_kv`` [B, H, length, D] per self-attention layer
    (replaced by the graph's outputs each step), ``cross_kv`` [B, H, N, D] per cross-attention layer."""

    self_kv: list[tuple[np.ndarray, np.ndarray]]
    cross_kv: list[tuple[np.ndarray, np.ndarray]]
    length: int = 0

    def reorder(self, index: np.ndarray) -> None:
        """Rows ``index`` of the self-attention past become the new rows (beams of one image share
        their memory, so the cross-attention rows are equal already)."""
        self.self_kv = [(k.take(index, axis=0), v.take(index, axis=0)) for k, v in self.self_kv]

    def keep_rows(self, index: np.ndarray) -> None:
        """Only rows ``index`` go on decoding: drop the others from every buffer, memory's too."""
        self.reorder(index)
        self.cross_kv = [(k.take(index, axis=0), v.take(index, axis=0)) for k, v in self.cross_kv]


class ArrayStep(Protocol):
    num_tokens: int

    def start(self, memory: np.ndarray) -> ArrayCache: ...

    def __call__(self, tokens: np.ndarray, cache: ArrayCache) -> np.ndarray: ...


def generation_logprobs(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities [B, V] (float32) of the next token with PAD and BOS excluded."""
    logits = logits.astype(np.float32, copy=True)
    logits[..., PAD_ID] = -np.inf
    logits[..., BOS_ID] = -np.inf
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _cut_loops(ids: np.ndarray) -> None:
    """Cut the repeating tail of every row of ``ids`` [B, L] that has no EOS, in place (PAD after)."""
    for b in np.flatnonzero((ids != EOS_ID).all(axis=1)):
        seq = ids[b][ids[b] != PAD_ID].tolist()
        ids[b, len(cut_loop(seq)):] = PAD_ID


def generate(step: ArrayStep, memory: np.ndarray, *, steps: int, stop_at_eos: bool = True) -> Generation:
    """Greedy decoding from BOS for every memory row, ``steps`` tokens at most; a sequence ends at
    its EOS (PAD after) or as a loop, and leaves the batch then (see pix2tex.models.decoding.generate).
    ``stop_at_eos=False`` always produces ``steps`` tokens (EOS is then an ordinary token)."""
    batch = memory.shape[0]
    out = np.full((batch, steps), PAD_ID, dtype=np.int64)
    logprob_sum = np.zeros(batch, dtype=np.float32)
    length = np.zeros(batch, dtype=np.float32)
    rows = np.arange(batch)  # the batch rows of the sequences still decoding
    last = np.full((batch, 1), BOS_ID, dtype=np.int64)
    cache = step.start(memory)
    width = 0
    for t in range(steps):
        logprobs = generation_logprobs(step(last, cache))
        nxt = logprobs.argmax(axis=-1)
        logprob_sum[rows] += logprobs[np.arange(len(nxt)), nxt]
        length[rows] += 1.0
        out[rows, t] = nxt
        width = t + 1
        if not stop_at_eos:
            last = nxt[:, None]
            continue
        ended = nxt == EOS_ID
        if width >= LOOP_MIN_TOKENS:
            ended |= looping(out[rows, max(0, width - LOOP_WINDOW) : width])
        if ended.all():
            break
        if ended.any():
            keep = np.flatnonzero(~ended)
            rows, nxt = rows[keep], nxt[keep]
            cache.keep_rows(keep)
        last = nxt[:, None]
    out = out[:, :width]
    if stop_at_eos:
        _cut_loops(out)
    return Generation(ids=out, logprob=logprob_sum / length)


def _top(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` largest values of each row, largest first, and their column indices."""
    index = np.argsort(-values, axis=1, kind="stable")[:, :n]
    return np.take_along_axis(values, index, axis=1), index


def beam_search(step: ArrayStep, memory: np.ndarray, *, beam_size: int, steps: int,
                length_penalty: float = 1.0) -> Generation:
    """Length-normalised beam search, batched over memory rows, ``steps`` tokens at most; the rules
    of pix2tex.models.decoding.beam_search (scores ``sum(logprob) / len ** length_penalty``)."""
    check_beam(beam_size, length_penalty)
    batch, k, vocab = memory.shape[0], beam_size, step.num_tokens
    memory = memory.repeat(k, axis=0)  # row b*k + j is beam j of image b
    tokens = np.full((batch * k, 1), BOS_ID, dtype=np.int64)
    # All beams start as the same BOS; only beam 0 is alive so the first step does not pick duplicates.
    scores = np.full((batch, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0
    finished: Hypotheses = [[] for _ in range(batch)]
    done = [False] * batch
    row_base = np.arange(batch)[:, None] * k
    cache = step.start(memory)
    for t in range(steps):
        logits = step(tokens[:, -1:], cache)
        candidates = (scores[..., None] + generation_logprobs(logits).reshape(batch, k, vocab)).reshape(batch, -1)
        cand_sum, cand_idx = _top(candidates, min(2 * k, k * vocab))
        cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
        length = t + 1
        _finish_eos(finished, done, tokens, cand_sum[:, :k], cand_beam[:, :k], cand_token[:, :k],
                    length ** length_penalty, k)
        live_sum, pick = _top(np.where(cand_token == EOS_ID, -np.inf, cand_sum).astype(np.float32), k)
        mark_done(finished, done, (live_sum[:, 0] / length ** length_penalty).tolist(), k)
        if all(done):
            break
        parent = (row_base + np.take_along_axis(cand_beam, pick, axis=1)).reshape(-1)
        tokens = np.concatenate((tokens[parent], np.take_along_axis(cand_token, pick, axis=1).reshape(-1, 1)), axis=1)
        cache.reorder(parent)
        scores = live_sum
    else:  # ran out of steps: open hypotheses finish without EOS
        for b in range(batch):
            if done[b]:
                continue
            for j in range(k):
                total = float(scores[b, j])
                if total > -np.inf:
                    finished[b].append((total / steps ** length_penalty, total, tokens[b * k + j, 1:].tolist()))
    best = _best_hypotheses(finished)
    _cut_loops(best.ids)
    return best


def _finish_eos(finished: Hypotheses, done: list[bool], tokens: np.ndarray, top_sum: np.ndarray,
                top_beam: np.ndarray, top_token: np.ndarray, norm: float, k: int) -> None:
    """Record every EOS among an image's k best candidates as finished, keeping the k best finished per image."""
    for b, j in np.argwhere(top_token == EOS_ID).tolist():
        total = float(top_sum[b, j])
        if done[b] or total == -np.inf:
            continue
        ids = tokens[b * k + int(top_beam[b, j]), 1:].tolist() + [EOS_ID]
        add_finished(finished, b, total, norm, ids, k)


def _best_hypotheses(finished: Hypotheses) -> Generation:
    """The best-scoring finished hypothesis per image, as a PAD-filled Generation."""
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    width = max(len(ids) for _, _, ids in best)
    ids = np.full((len(best), width), PAD_ID, dtype=np.int64)
    for b, (_, _, seq) in enumerate(best):
        ids[b, : len(seq)] = seq
    logprob = np.array([total / len(seq) for _, total, seq in best], dtype=np.float32)
    return Generation(ids=ids, logprob=logprob)
