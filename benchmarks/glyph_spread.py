"""How far is each glyph-size estimate from the truth?  No model needed.

On our own renders the true glyph size is known up to a constant: every formula of one font at one
dpi has glyphs of the same size (``choose_style`` gives each render's font and dpi), so a sound
estimator gives about the same number for all of them, whatever the formula holds.  The real
im2latex images (``im2latex_val_real``, the benchmark's own pipeline) are all one font at one size.
For each method of :data:`pix2tex.preprocess.GLYPH_ESTIMATORS` this prints JSON lines:

- per set (``renders``: a seeded sample of each corpus's renders, deviations from the median of
  their font and dpi; ``real``: deviations from the median of all): the interquartile range and
  5th/95th percentiles of log(estimate / median), the share off by over 25 % and over 40 %, the
  share whose estimate is over 2x the median (``shrunk_2x``: the image is shrunk until its glyphs
  are unreadable) and under half of it (``enlarged_2x``: less harmful, the canvas limits it), and
  the share that moves by over 10 % against "stroke" (what a retrain on it must relearn);
- ``demo``: the estimates of the eight formulas of ``make demo`` (Computer Modern, 120 dpi: one
  size) and their max/min ratio.

    python -m benchmarks.glyph_spread --data ../data [--per-corpus 400 --real 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from pix2tex.dataset.dataset import load_image_gray, read_labels
from pix2tex.demo import render_demo
from pix2tex.preprocess import GLYPH_ESTIMATORS, ImageLoadError, estimate_glyph_height, ink_content, to_gray
from pix2tex.render.renderer import RenderSettings, choose_style

REPO = Path(__file__).resolve().parent.parent
REAL = REPO.parent / "shared" / "data" / "images" / "im2latex_val_real"


def _settings(render_dir: Path) -> RenderSettings:
    s = json.loads((render_dir / "render.json").read_text())["settings"]
    return RenderSettings(dpi=tuple(s["dpi"]), fonts=tuple(s["fonts"]), seed=s["seed"], dpi_step=s["dpi_step"],
                          workers=1)


def _estimates(gray: np.ndarray) -> dict[str, float] | None:
    try:
        content = ink_content(gray)
    except ImageLoadError:  # blank renders
        return None
    found = {m: estimate_glyph_height(content, m) for m in GLYPH_ESTIMATORS}
    return None if None in found.values() else found


def render_sample(data: Path, per_corpus: int, rng: random.Random) -> list[tuple[tuple[str, int], dict]]:
    """((font, dpi), estimates) of ``per_corpus`` renders of each corpus under ``data/render``."""
    out = []
    for corpus in sorted(p for p in (data / "render").iterdir() if (p / "render.json").exists()):
        settings = _settings(corpus)
        files = sorted((corpus / "images").glob("*.png"))
        for path in rng.sample(files, min(per_corpus, len(files))):
            found = _estimates(load_image_gray(path))
            if found:
                out.append((choose_style(int(path.stem), settings), found))
    return out


def real_sample(folder: Path, count: int, rng: random.Random) -> list[tuple[str, dict]]:
    images = sorted(image for image, _ in read_labels(folder / "labels.tsv"))
    out = []
    for image in rng.sample(images, min(count, len(images))):
        found = _estimates(load_image_gray(folder / image))
        if found:
            out.append(("one size", found))
    return out


def spread(sample: list[tuple[object, dict]], method: str) -> dict[str, float]:
    """Deviation statistics of ``method`` from the median of each group (see the module doc)."""
    groups: dict[object, list[float]] = {}
    for group, found in sample:
        groups.setdefault(group, []).append(found[method])
    median = {g: float(np.median(v)) for g, v in groups.items()}
    dev = np.log([found[method] / median[g] for g, found in sample])
    moved = np.log([found[method] / found["stroke"] for _, found in sample])
    q5, q25, q75, q95 = np.percentile(dev, [5, 25, 75, 95])
    return {"images": len(sample), "iqr": round(q75 - q25, 3), "p5": round(q5, 3), "p95": round(q95, 3),
            "off_25pct": round(float(np.mean(np.abs(dev) > np.log(1.25))), 3),
            "off_40pct": round(float(np.mean(np.abs(dev) > np.log(1.4))), 3),
            # an estimate too large shrinks the image too far (unreadable glyphs), too small enlarges it
            "shrunk_2x": round(float(np.mean(dev > np.log(2))), 4),
            "enlarged_2x": round(float(np.mean(dev < -np.log(2))), 4),
            "moved_10pct": round(float(np.mean(np.abs(moved) > np.log(1.1))), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.glyph_spread", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a data folder with render/<corpus>/ (standing_data)")
    parser.add_argument("--real", type=Path, default=REAL, help="a folder of real one-size images with labels.tsv")
    parser.add_argument("--per-corpus", type=int, default=400, help="renders drawn from each corpus")
    parser.add_argument("--real-images", type=int, default=1000, help="real images drawn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    sets = {"renders": render_sample(args.data, args.per_corpus, rng),
            "real": real_sample(args.real, args.real_images, rng)}
    with tempfile.TemporaryDirectory() as tmp:
        demo = [_estimates(np.asarray(to_gray(r.image))) for r in render_demo(tmp)]
    for method in GLYPH_ESTIMATORS:
        for name, sample in sets.items():
            print(json.dumps({"estimator": method, "set": name, **spread(sample, method)}), flush=True)
        heights = [d[method] for d in demo]
        print(json.dumps({"estimator": method, "set": "demo", "heights": [round(h, 1) for h in heights],
                          "max_over_min": round(max(heights) / min(heights), 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
