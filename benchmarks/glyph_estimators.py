"""How far do bolder, blurrier or coarser images move each glyph-size estimate?  No model needed.

``prepare`` scales an image so its measured glyph height becomes the training size; an estimate
that grows when the same formula is printed bolder or blurrier makes the model read such images
too small.  This takes validation renders (never trained on), scales each so its "soft" glyph height
is the training size, changes it as real documents do (a 2x2 erosion of the white: bolder ink; a
Gaussian blur of sigma 1; a 2x downscale and back; erosion and blur together; a 2x bicubic
upscale, whose expected ratio is 2) and measures it with every method of
:data:`pix2tex.preprocess.GLYPH_ESTIMATORS`.  One JSON line per (method, change): the median and
10th/90th percentiles of estimate / (expected height), and milliseconds per estimate.

    python -m benchmarks.glyph_estimators --data data/valid_im2latex_val.pkl,data/valid.pkl --limit 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from pix2tex.dataset.dataset import Im2LatexDataset, load_image_gray
from pix2tex.preprocess import DEFAULT_GLYPH_HEIGHT, GLYPH_ESTIMATORS, estimate_glyph_height, ink_content

_BOLD = np.ones((2, 2), np.uint8)


def _half_and_back(a: np.ndarray) -> np.ndarray:
    h, w = a.shape
    small = cv2.resize(a, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# name -> (change, expected factor of the glyph height)
CHANGES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "none": (lambda a: a, 1.0),
    "bolder": (lambda a: cv2.erode(a, _BOLD), 1.0),  # erosion of the white background = thicker ink
    "blur": (lambda a: cv2.GaussianBlur(a, (0, 0), 1.0), 1.0),
    "coarser": (_half_and_back, 1.0),
    "bolder+blur": (lambda a: cv2.GaussianBlur(cv2.erode(a, _BOLD), (0, 0), 1.0), 1.0),
    "upscale2": (lambda a: cv2.resize(a, (2 * a.shape[1], 2 * a.shape[0]), interpolation=cv2.INTER_CUBIC), 2.0),
}


def at_training_size(gray: np.ndarray) -> np.ndarray | None:
    """``gray`` cropped and scaled so its "soft" glyph height is the training size, with a white border."""
    c = ink_content(gray)
    glyph = estimate_glyph_height(c)
    if glyph is None:
        return None
    scale = DEFAULT_GLYPH_HEIGHT / glyph
    c = cv2.resize(c, (max(1, round(c.shape[1] * scale)), max(1, round(c.shape[0] * scale))),
                   interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(c, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=255)


def summary(ratios: list[float]) -> dict[str, float]:
    r = np.asarray([x for x in ratios if np.isfinite(x)])
    return {"n": int(r.size), "median": round(float(np.median(r)), 3),
            "p10": round(float(np.percentile(r, 10)), 3), "p90": round(float(np.percentile(r, 90)), 3)}


def run(images: list[np.ndarray]) -> Iterator[dict]:
    base = [b for b in (at_training_size(g) for g in images) if b is not None]
    for method in GLYPH_ESTIMATORS:
        for name, (change, factor) in CHANGES.items():
            ratios, seconds = [], 0.0
            for b in base:
                c = ink_content(change(b))
                start = time.perf_counter()
                glyph = estimate_glyph_height(c, method)
                seconds += time.perf_counter() - start
                ratios.append(glyph / (factor * DEFAULT_GLYPH_HEIGHT) if glyph else float("nan"))
            yield {"bench": "glyph_estimators", "method": method, "change": name, **summary(ratios),
                   "ms": round(1000 * seconds / max(1, len(base)), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.glyph_estimators", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="comma-separated validation .pkl files")
    parser.add_argument("--limit", type=int, default=100, help="images per dataset, spread evenly over it")
    parser.add_argument("--json", action="store_true", help="JSON lines (the only output format)")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    from benchmarks.glyph_scale import spread  # glyph_scale imports CHANGES from here

    try:
        images = []
        for path in args.data.split(","):
            data = Im2LatexDataset.load(path)
            images += [load_image_gray(data.image_path(i)) for i in spread(len(data.samples.paths), args.limit)]
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in run(images):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
