"""Which samples go together in a batch, and in which order: a pure function of the settings.

Images are grouped by the patch grid their prepared size needs, so a batch pads little; labels
of similar length can be grouped too (``length_pool``); corpora can be weighted.  The order of
an epoch depends only on (table, settings, seed, epoch), which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pix2tex.dataset.samples import SampleTable, Size

__all__ = ["BatchSampler"]


@dataclass(frozen=True)
class BatchSampler:
    """Batching settings; :meth:`batches` applies them to a table."""

    batchsize: int = 16
    shuffle: bool = True
    seed: int = 42
    patch_size: int = 16
    max_size: Size = Size(192, 672)
    min_size: Size = Size(32, 32)
    max_tokens: int = 512  # longest label kept, in tokens (max_seq_len, or a shorter curriculum limit)
    keep_smaller_batches: bool = False
    # Batches of similar label length (0: off): each size bucket's shuffled samples are cut into
    # pools of length_pool batches, and each pool is sorted by label length before it is cut into
    # batches.  Half of the target tokens of size-only buckets are padding otherwise.
    length_pool: int = 0
    # A corpus of weight 3 is seen three times per epoch, one of weight 0.5 half the time;
    # unnamed corpora keep weight 1.
    corpus_weights: dict[str, float] = field(default_factory=dict)
    glyph_scale: float = 1.0  # images are prepared with glyphs this many times DEFAULT_GLYPH_HEIGHT

    def eligible(self, table: SampleTable, lengths: Sequence[int] | None) -> list[int]:
        """Rows whose prepared image fits ``max_size`` and whose label (when ``lengths`` are
        known) fits ``max_tokens``."""
        return [i for i, _ in self._fitting(table, lengths)]

    def _fitting(self, table: SampleTable, lengths: Sequence[int] | None) -> Iterator[tuple[int, Size]]:
        """(row, prepared size) of the eligible rows, in row order."""
        for i in range(len(table)):
            size = table.prepared_size(i, self.glyph_scale)
            if size.width > self.max_size.width or size.height > self.max_size.height:
                continue
            if lengths is not None and lengths[i] > self.max_tokens:
                continue
            yield i, size

    def batches(self, table: SampleTable, lengths: Sequence[int] | None, epoch: int) -> list[list[int]]:
        """The batches of one epoch, as lists of row indices."""
        rng = random.Random(f"{self.seed}:{epoch}")
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        p = self.patch_size
        for i, size in self._fitting(table, lengths):
            key = (math.ceil(max(size.height, self.min_size.height) / p),
                   math.ceil(max(size.width, self.min_size.width) / p))
            buckets[key] += [i] * self._copies(table, i, rng)
        out: list[list[int]] = []
        # Neighbouring buckets are merged until a batch fills, so rare sizes are not dropped.
        pending: list[int] = []
        pooled = lengths if self.length_pool else None
        for key in sorted(buckets):
            members = buckets[key]
            if self.shuffle:
                rng.shuffle(members)
            if pooled is not None:
                pool = self.length_pool * self.batchsize
                members = [i for lo in range(0, len(members), pool)
                           for i in sorted(members[lo : lo + pool], key=pooled.__getitem__)]
            pending += members
            while len(pending) >= self.batchsize:
                out.append(pending[: self.batchsize])
                pending = pending[self.batchsize :]
        if pending and (self.keep_smaller_batches or not out):
            out.append(pending)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def _copies(self, table: SampleTable, index: int, rng: random.Random) -> int:
        """How often a sample appears in an epoch under ``corpus_weights``: the weight's whole
        part, plus one more with probability its fraction.  Draws from ``rng`` only for
        fractional weights, so datasets without them keep the order they always had."""
        if not self.corpus_weights:
            return 1
        weight = self.corpus_weights.get(table.corpus(index), 1.0)
        whole, frac = divmod(weight, 1.0)
        return int(whole) + (1 if frac and rng.random() < frac else 0)
