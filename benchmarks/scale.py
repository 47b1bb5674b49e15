"""How well does prepare() undo changes of scale, margins and polarity?  No model needed.

For every real im2latex render in ../shared/data/images/im2latex_sample it builds variants (the
original; 2x/3x/4x bicubic upscales with a 200 px white margin; dark mode; and two extra: a
photo-like JPEG and a 0.75x low-resolution copy), runs ``prepare`` with glyph-scale normalisation
(``rescale``) and with a naive resize (fit into the maximum size only), and measures the height of
the ink in the output against two references:

* ``same_mode_orig``: ``prepare`` of the original image in the same mode (invariance);
* ``native``: the original at its own, training, scale (naive ``prepare`` of the original -- the
  im2latex renders *are* the training distribution, so this is the size the model expects).

Prints one JSON line per (variant, mode): median / 90th-percentile relative error and the fraction
of images within 10 %.  ``--measure-target`` instead prints the constants hard-coded in
pix2tex/preprocess.py (``DEFAULT_GLYPH_HEIGHT``).

    python -m benchmarks.scale --json [--limit N]     # all 986 images: ~6 min on 2 cores
    python -m benchmarks.scale --measure-target
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from pix2tex.config import ModelConfig
from pix2tex.preprocess import (
    DEFAULT_GLYPH_HEIGHT,
    estimate_glyph_height,
    ink_content,
    load_image,
    prepare,
    to_gray,
)

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images" / "im2latex_sample" / "images"


def _pad(img: Image.Image, margin: int, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    out = Image.new("RGB", (img.width + 2 * margin, img.height + 2 * margin), colour)
    out.paste(img, (margin, margin))
    return out


def _upscaled(factor: float, margin: int) -> Callable[[Image.Image], Image.Image]:
    def make(img: Image.Image) -> Image.Image:
        big = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BICUBIC)
        return _pad(big, margin)
    return make


def _dark(img: Image.Image) -> Image.Image:
    """Dark mode: light gray ink (230) on a near-black background (30), anti-aliasing kept."""
    ink = 255.0 - np.asarray(img.convert("L"), dtype=np.float32)
    v = np.rint(30.0 + ink * (200.0 / 255.0)).astype(np.uint8)
    return Image.fromarray(np.stack([v, v, v + 5], axis=2))


def _photo(img: Image.Image) -> Image.Image:
    """Photo-like: 2.5x, 100 px margin on tinted paper, sensor noise, JPEG quality 85, reloaded."""
    big = img.resize((round(img.width * 2.5), round(img.height * 2.5)), Image.Resampling.BICUBIC)
    a = np.asarray(_pad(big, 100), dtype=np.float32) / 255.0
    paper = np.array([240, 235, 220], dtype=np.float32)
    a = a * paper  # white -> paper colour, black stays black
    rng = np.random.default_rng(abs(hash(img.size)) % 2**32)
    a = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=85)
    return load_image(buf.getvalue())


def _small(img: Image.Image) -> Image.Image:
    return img.resize((round(img.width * 0.75), round(img.height * 0.75)), Image.Resampling.BOX)


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": lambda img: img,
    "up2_margin200": _upscaled(2, 200),
    "up3_margin200": _upscaled(3, 200),
    "up4_margin200": _upscaled(4, 200),
    "dark": _dark,
    "photo_2.5x_jpeg": _photo,
    "small_0.75x": _small,
}


def ink_height(out: np.ndarray) -> int:
    """Rows spanned by ink (< 128) in a prepared image."""
    rows = np.flatnonzero((out < 128).any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _images(limit: int | None) -> list[Path]:
    paths = sorted(SAMPLE_DIR.glob("*.png"))
    if not paths:
        raise SystemExit(f"error: no images under {SAMPLE_DIR}")
    return paths[:limit] if limit else paths


def _summary(errs: list[float]) -> dict[str, float]:
    a = np.abs(np.array(errs, dtype=float))
    return {"median": round(float(np.median(a)), 4), "p90": round(float(np.percentile(a, 90)), 4),
            "within_10pct": round(float((a <= 0.10).mean()), 4)}


def run(limit: int | None) -> Iterator[dict]:
    cfg = ModelConfig()
    size = dict(patch_size=cfg.patch_size, max_height=cfg.max_height, max_width=cfg.max_width)
    errs: dict[tuple[str, str, str], list[float]] = {}
    seconds: dict[str, float] = {}
    failures: dict[str, int] = {}
    paths = _images(limit)
    for path in paths:
        original = Image.open(path).convert("RGB")
        native = ink_height(prepare(original, rescale=False, **size))
        ref = {"rescale": ink_height(prepare(original, rescale=True, **size)), "naive": native}
        for vname, make in VARIANTS.items():
            variant = make(original)
            for mode, rescale in (("rescale", True), ("naive", False)):
                t0 = time.perf_counter()
                try:
                    h = ink_height(prepare(variant, rescale=rescale, **size))
                except ValueError:
                    h = 0
                if h == 0 or ref[mode] == 0 or native == 0:  # refused, or nothing dark left
                    failures[f"{vname}/{mode}"] = failures.get(f"{vname}/{mode}", 0) + 1
                    continue
                seconds[mode] = seconds.get(mode, 0.0) + time.perf_counter() - t0
                errs.setdefault((vname, mode, "same_mode_orig"), []).append(h / ref[mode] - 1)
                errs.setdefault((vname, mode, "native"), []).append(h / native - 1)
    for vname in VARIANTS:
        for mode in ("rescale", "naive"):
            yield {"variant": vname, "mode": mode, "n": len(errs.get((vname, mode, "native"), [])),
                   "failures": failures.get(f"{vname}/{mode}", 0),
                   "height_err_vs_same_mode_orig": _summary(errs[(vname, mode, "same_mode_orig")]),
                   "height_err_vs_native": _summary(errs[(vname, mode, "native")])}
    n_calls = len(paths) * len(VARIANTS)
    yield {"summary": "mean prepare() time per image (ms)",
           **{mode: round(1000 * s / n_calls, 2) for mode, s in seconds.items()}}


def measure_target(limit: int | None) -> dict:
    """Median glyph height of the training renders, through prepare()'s own pipeline."""
    est = []
    for path in _images(limit):
        gray = np.asarray(to_gray(Image.open(path)))
        g = estimate_glyph_height(ink_content(gray))
        if g is not None:
            est.append(g)
    q1, q2, q3 = np.percentile(est, [25, 50, 75])
    # The renders share one font size, so any spread is the estimator's dependence on content.
    return {"images": len(est), "glyph_height": round(float(q2), 2), "hardcoded": DEFAULT_GLYPH_HEIGHT,
            "iqr_over_median": round(float((q3 - q1) / q2), 4),
            "p10_p90": [round(float(v), 2) for v in np.percentile(est, [10, 90])]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON lines (the only output format)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--measure-target", action="store_true", help="print the constants for preprocess.py")
    args = ap.parse_args(argv)
    if args.measure_target:
        print(json.dumps(measure_target(args.limit)))
        return 0
    for line in run(args.limit):
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
