"""Metrics on rendered formulas (pure functions on grayscale arrays).

Token metrics punish LaTeX that is written differently but looks the same (``\\le`` against
``\\leq``, ``{\\frac a b}`` against ``\\frac{a}{b}``).  Following im2markup (Deng et al., 2017), the
prediction and the reference are both rendered with the same renderer, font and resolution, and the
images are compared:

* **exact match**: the two images are identical after binarization and cropping to the ink;
* **exact match without whitespace**: the same after removing the columns that hold no ink (so
  a thin space more or less does not count);
* **column edit distance**: each image is read as a sequence of pixel columns, and the Levenshtein
  distance between the two sequences, divided by the longer one, measures how much of the picture
  differs (0 = identical, 1 = nothing in common).  Images of different heights are compared after
  padding the shorter one with blank rows at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

__all__ = ["binarize", "drop_blank_columns", "image_exact_match", "image_exact_match_no_ws", "column_edit_distance",
           "RenderedComparison", "compare_rendered"]

INK_THRESHOLD = 128  # gray values below this are ink (renders are black on white, antialiased)


def binarize(gray: np.ndarray, threshold: int = INK_THRESHOLD) -> np.ndarray:
    """Ink mask (bool [H, W]) of a grayscale image, cropped to the ink's bounding box; [0, 0] if blank."""
    ink = np.asarray(gray) < threshold
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool)
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def drop_blank_columns(ink: np.ndarray) -> np.ndarray:
    """The ink mask without its all-blank columns (im2markup's "w/o whitespace")."""
    return ink[:, ink.any(axis=0)] if ink.size else ink


def image_exact_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two renders are identical after binarization and cropping."""
    x, y = binarize(a), binarize(b)
    return x.shape == y.shape and bool((x == y).all())


def image_exact_match_no_ws(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two renders are identical once blank columns are removed as well."""
    x, y = drop_blank_columns(binarize(a)), drop_blank_columns(binarize(b))
    return x.shape == y.shape and bool((x == y).all())


def _columns(ink: np.ndarray, height: int) -> list[bytes]:
    padded = np.zeros((height, ink.shape[1]), dtype=bool)
    padded[: ink.shape[0]] = ink
    return [padded[:, k].tobytes() for k in range(padded.shape[1])]


def column_edit_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Levenshtein distance between the binarized images' column sequences, over the longer one."""
    x, y = binarize(a), binarize(b)
    if x.size == 0 and y.size == 0:
        return 0.0
    height = max(x.shape[0], y.shape[0])
    cx, cy = _columns(x, height), _columns(y, height)
    return Levenshtein.distance(cx, cy) / max(len(cx), len(cy), 1)


@dataclass(frozen=True)
class RenderedComparison:
    """One prediction against its reference, both rendered."""

    compiled: bool  # the prediction rendered
    exact: bool
    exact_no_ws: bool
    edit_distance: float  # 1.0 when the prediction did not render


def compare_rendered(prediction: np.ndarray | None, reference: np.ndarray) -> RenderedComparison:
    """Compare a rendered prediction (None: it did not compile) with its rendered reference."""
    if prediction is None:
        return RenderedComparison(False, False, False, 1.0)
    return RenderedComparison(True, image_exact_match(prediction, reference),
                              image_exact_match_no_ws(prediction, reference),
                              column_edit_distance(prediction, reference))
