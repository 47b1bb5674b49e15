"""Glyph-size estimates of the demo formulas, and what the model reads at them.

The eight formulas of ``pix2tex/dataset/demo_formulas.txt`` are rendered as ``make demo`` renders
them (Computer Modern, 120 dpi): one font, one size, so their glyphs are the same height and a
sound estimator gives about the same number for each.  One JSON line per formula: its estimate by
each of :data:`pix2tex.preprocess.GLYPH_ESTIMATORS`, the bundled model's reading at its own
estimate (as ``LatexOCR`` reads it) and at the median estimate of all eight, and whether each
reading is exact.

    python -m benchmarks.demo_glyphs [--checkpoint MODEL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile

import numpy as np

from pix2tex.demo import demo_formulas, render_demo
from pix2tex.inference import LatexOCR
from pix2tex.normalize import normalize
from pix2tex.preprocess import (
    DEFAULT_GLYPH_HEIGHT,
    GLYPH_ESTIMATORS,
    estimate_glyph_height,
    ink_content,
    prepare,
    to_gray,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_glyphs", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    args = parser.parse_args(argv)
    ocr = LatexOCR(args.checkpoint)
    c = ocr.config
    formulas = demo_formulas()
    with tempfile.TemporaryDirectory() as tmp:
        images = [r.image for r in render_demo(tmp)]
    estimates = [{m: estimate_glyph_height(ink_content(np.asarray(to_gray(img))), m) for m in GLYPH_ESTIMATORS}
                 for img in images]
    median = statistics.median(e[ocr.glyph_estimator] for e in estimates)

    def read_at(img, glyph: float) -> str:
        x = prepare(img, patch_size=c.patch_size, max_height=c.max_height, max_width=c.max_width,
                    target_glyph_height=DEFAULT_GLYPH_HEIGHT * ocr.glyph_scale, glyph_height=glyph)
        return ocr.read([x])[0][0]

    for k, (formula, img, est) in enumerate(zip(formulas, images, estimates, strict=True), 1):
        ref, own, at_median = normalize(formula), ocr(img), read_at(img, median)
        print(json.dumps({"formula": k, "estimates": {m: round(v, 2) for m, v in est.items()},
                          "median_estimate": round(median, 2), "reading": own, "exact": own == ref,
                          "reading_at_median": at_median, "exact_at_median": at_median == ref}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
