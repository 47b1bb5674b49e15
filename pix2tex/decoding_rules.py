"""The rules every decoding loop follows, without torch: when a reading stops, and what is checked.

Two implementations of the decoding loops follow them: :mod:`pix2tex.models.decoding` over
PyTorch decoder steps (training, evaluation, the torch engine) and :mod:`pix2tex.onnx_decoding`
over onnxruntime's graphs (the light install).  Everything here works on plain lists or on
arrays of either library, so the two loops cannot drift apart on the rules.

A decoder that loops (most often on one spacing command, ``\\, \\, \\, …``, until the length limit)
is stopped: a sequence whose last tokens repeat a block of at most ``LOOP_PERIOD`` tokens at least
``LOOP_MIN_COPIES`` times over ``LOOP_MIN_TOKENS`` tokens or more ends there, without EOS, and keeps
one copy of the block (:func:`cut_loop`); so does any sequence that reaches the length limit with
a repeating tail.  Well-formed LaTeX does not repeat so (a row of nine zero cells, ``{ 0 } &`` x 9,
is the nearest), and a reading that loops is wrong anyway: cut, it is shorter, closer to the
truth and cheaper.  The confidence still counts every token chosen, the loop included.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "LOOP_PERIOD", "LOOP_MIN_COPIES", "LOOP_MIN_TOKENS", "LOOP_WINDOW", "looping", "cut_loop",
    "check_max_new_tokens", "check_sampling", "check_beam", "Hypotheses", "add_finished", "mark_done",
]

LOOP_PERIOD = 8  # a loop repeats a block of at most this many tokens…
LOOP_MIN_COPIES = 8  # …at least this many times…
LOOP_MIN_TOKENS = 32  # …over at least this many tokens (so a one-token block repeats 32 times)
LOOP_WINDOW = max(LOOP_MIN_TOKENS, LOOP_MIN_COPIES * LOOP_PERIOD)  # the most tokens a loop test reads


def looping(tokens: Any) -> Any:
    """[rows] bool: the rows of ``tokens`` [rows, T] (a torch tensor or a numpy array) whose last
    tokens are a loop (see the module doc); None when T is too short for any loop."""
    found = None
    for period in range(1, LOOP_PERIOD + 1):
        window = max(LOOP_MIN_TOKENS, LOOP_MIN_COPIES * period)
        if window > tokens.shape[1]:
            break  # the window only grows with the period
        tail = tokens[:, -window:]
        repeats = (tail[:, period:] == tail[:, :-period]).all(1)
        found = repeats if found is None else found | repeats
    return found


def cut_loop(ids: list[int], min_copies: int = 4) -> list[int]:
    """``ids`` with a repeating tail (a block of at most LOOP_PERIOD tokens, ``min_copies`` times or
    more) cut to one copy of the block; unchanged without one.  The longest such tail is cut."""
    keep = len(ids)
    for period in range(1, LOOP_PERIOD + 1):
        start = len(ids) - period  # walk back while the token a period later is the same
        while start > 0 and ids[start - 1] == ids[start - 1 + period]:
            start -= 1
        if start >= 0 and len(ids) - start >= min_copies * period:
            keep = min(keep, start + period)
    return ids[:keep]


def check_max_new_tokens(max_new_tokens: int | None, max_seq_len: int) -> int:
    """The number of tokens to decode at most: ``max_new_tokens`` checked, or all that fit after BOS."""
    limit = max_seq_len - 1  # BOS takes the first position
    if max_new_tokens is None:
        return limit
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 0 < max_new_tokens <= limit:
        raise ValueError(
            f"max_new_tokens must be an integer in 1..{limit} (max_seq_len - 1), got {max_new_tokens!r}")
    return max_new_tokens


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError (one line) unless the sampling settings are valid."""
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def check_beam(beam_size: int, length_penalty: float) -> None:
    """ValueError (one line) unless the beam-search settings are valid."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size <= 0:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    if not (length_penalty >= 0.0 and math.isfinite(length_penalty)):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")


# -- beam search's bookkeeping (plain Python, the same for both engines) ---------------------------

Hypotheses = list[list[tuple[float, float, list[int]]]]  # per image: (score, logprob sum, ids)


def add_finished(finished: Hypotheses, b: int, total: float, norm: float, ids: list[int], k: int) -> None:
    """Record a hypothesis of image ``b`` that ended (score ``total / norm``), keeping its k best."""
    finished[b].append((total / norm, total, ids))
    finished[b] = sorted(finished[b], key=lambda h: h[0], reverse=True)[:k]


def mark_done(finished: Hypotheses, done: list[bool], best_open: list[float], k: int) -> None:
    """An image is done when no open hypothesis (scored at its current length) beats its k finished ones."""
    for b, hyps in enumerate(finished):
        if done[b] or not hyps:
            continue
        no_open = best_open[b] == float("-inf")
        done[b] = no_open or (len(hyps) >= k and hyps[-1][0] >= best_open[b])
