"""The samples of a dataset as one immutable table.

A :class:`SampleTable` holds, per sample, where its image is (a root folder and a path inside
it), the image's size, the glyph height measured on it and its normalized label.  The columns
are tuples and the table is frozen: combining, subsetting or moving a dataset makes a new table,
so the columns can never fall out of step.

Sizes are :class:`Size` (height, width) everywhere inside the package.  The seed's settings
(``max_dimensions``, ``min_dimensions``) are (width, height); :meth:`Size.from_wh` is the one
place that turns them around.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from pix2tex.preprocess import DEFAULT_GLYPH_HEIGHT, MARGIN

__all__ = ["Size", "SampleTable"]


class Size(NamedTuple):
    """An image size in pixels, height first (as numpy and torch order an image's axes)."""

    height: int
    width: int

    @classmethod
    def from_wh(cls, dimensions: Sequence[int]) -> Size:
        """A size from the seed's (width, height) settings."""
        width, height = dimensions
        return cls(int(height), int(width))


@dataclasses.dataclass(frozen=True, eq=False)  # eq by identity: comparing every row is never what is meant
class SampleTable:
    """One row per sample; ``roots`` are the image folders that ``root_ids`` point into."""

    roots: tuple[str, ...] = ()
    root_ids: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()
    heights: tuple[int, ...] = ()
    widths: tuple[int, ...] = ()
    glyphs: tuple[float | None, ...] = ()  # glyph heights in pixels (see pix2tex.preprocess); None: unknown
    labels: tuple[str, ...] = ()

    COLUMNS = ("root_ids", "paths", "heights", "widths", "glyphs", "labels")

    def __post_init__(self) -> None:
        for name in ("roots", *self.COLUMNS):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.paths)
        for name in self.COLUMNS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"'{name}' has {len(getattr(self, name))} entries for {n} images")
        if any(not 0 <= r < len(self.roots) for r in self.root_ids):
            raise ValueError(f"'root_ids' must index the {len(self.roots)} image folders")

    def __len__(self) -> int:
        return len(self.paths)

    # -- one sample ----------------------------------------------------------------------------
    def image_path(self, index: int) -> Path:
        return Path(self.roots[self.root_ids[index]]) / self.paths[index]

    def corpus(self, index: int) -> str:
        """The corpus a sample comes from: the name of the folder holding its ``images/`` folder
        (``render/<corpus>/images/0000001.png``, as create_data.sh names it after the formula file),
        or of its image's own folder in other layouts ("" for images at the dataset's root)."""
        folder = Path(self.paths[index]).parent
        return folder.parent.name if folder.name == "images" else folder.name

    def prepared_size(self, index: int, glyph_scale: float = 1.0) -> Size:
        """The size the image will have after :func:`pix2tex.preprocess.prepare`, before shrinking
        to the size limits: its ink scaled to the training glyph height (``glyph_scale`` times
        ``DEFAULT_GLYPH_HEIGHT``), plus margins."""
        glyph = self.glyphs[index]
        scale = DEFAULT_GLYPH_HEIGHT * glyph_scale / glyph if glyph else 1.0
        return Size(round(self.heights[index] * scale) + 2 * MARGIN, round(self.widths[index] * scale) + 2 * MARGIN)

    # -- whole tables --------------------------------------------------------------------------
    def corpus_sizes(self) -> Counter[str]:
        """Number of samples per corpus."""
        return Counter(self.corpus(i) for i in range(len(self)))

    def concat(self, other: SampleTable) -> SampleTable:
        """This table's rows, then ``other``'s (its image folders kept as roots of their own)."""
        offset = len(self.roots)
        return SampleTable(self.roots + other.roots, self.root_ids + tuple(r + offset for r in other.root_ids),
                           *(getattr(self, c) + getattr(other, c) for c in self.COLUMNS[1:]))

    def subset(self, indices: Iterable[int]) -> SampleTable:
        """The rows ``indices``, in that order (all roots kept)."""
        rows = list(indices)
        return dataclasses.replace(self, **{c: [getattr(self, c)[i] for i in rows] for c in self.COLUMNS})

    def with_roots(self, roots: Sequence[str]) -> SampleTable:
        """The same rows with their image folders moved (one new path per root)."""
        if len(roots) != len(self.roots):
            raise ValueError(f"{len(roots)} image folders given for {len(self.roots)}")
        return dataclasses.replace(self, roots=tuple(roots))
