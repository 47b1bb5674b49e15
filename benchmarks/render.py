"""Throughput of the training-data renderer (latex → DVI → dvipng) on real formulas.

    python -m benchmarks.render [--formulas F] [--n 2000] [--workers 2] [--batch-size B] --json
    python -m benchmarks.render --scale --json

Renders the first ``n`` lines of ``F`` (default ../shared/data/formulas/im2latex_val.txt) end to
end with :func:`pix2tex.render.renderer.render_dataset` into a temporary folder and prints one
JSON line: formulas per second (wall clock and per CPU second, as other jobs on the machine slow
the wall clock down), the share that rendered, and the most common failure reasons.

``--scale`` instead measures at which resolution our renders match the real im2latex-100k images
(../shared/data/images/im2latex_sample): each label is rendered in Computer Modern at 100 dpi and
the ink extents of both images are compared (the real ones are padded with white, so the ink's
bounding box is measured, not the image).  This is what the default ``--dpi`` range is built on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from pix2tex.render.renderer import DEFAULT_DPI, RenderSettings, read_formulas, render_dataset, render_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_FORMULAS = SHARED / "formulas" / "im2latex_val.txt"
SAMPLE = SHARED / "images" / "im2latex_sample"


def _cpu_seconds() -> float:
    """User + system time of this process and of all its finished descendants."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(formulas_path: Path, n: int, workers: int, batch_size: int, seed: int) -> dict:
    """Render ``n`` formulas once and return the measurements."""
    formulas = read_formulas(formulas_path, limit=n)
    settings = RenderSettings(workers=workers, batch_size=batch_size, seed=seed)
    load = os.getloadavg()[0]
    cpu_before = _cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="pix2tex-bench-render-") as out:
        report = render_dataset(formulas, out, settings)
    cpu = _cpu_seconds() - cpu_before
    reasons = Counter(reason for _, _, reason in report.failures)
    return {
        "task": "render",
        "formulas": str(formulas_path.name),
        "n": report.total,
        "workers": workers,
        "batch_size": batch_size,
        "seconds": round(report.seconds, 3),
        "formulas_per_s": round(report.total / report.seconds, 1) if report.seconds else None,
        # CPU time of this process, the workers, latex and dvipng: unlike the wall time it
        # does not depend on what else the machine is doing.
        "cpu_seconds": round(cpu, 3),
        "formulas_per_cpu_s": round(report.total / cpu, 1) if cpu else None,
        "load_before": round(load, 2),
        "rendered": report.rendered,
        "rendered_share": round(report.rendered / report.total, 4) if report.total else None,
        "top_failures": reasons.most_common(5),
    }


def _ink_box(image: Image.Image) -> tuple[int, int] | None:
    """(height, width) of the pixels darker than mid-gray, or None for a blank image."""
    ys, xs = np.nonzero(np.asarray(image.convert("L")) < 128)
    return (int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)) if len(ys) else None


def scale(dpi: int = 100) -> dict:
    """The resolution at which our renders have the size of the real im2latex-100k images."""
    rows = [line.split("\t", 1) for line in (SAMPLE / "labels.tsv").read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory(prefix="pix2tex-bench-scale-") as tmp:
        ours = render_images([latex for _, latex in rows], "cm", dpi, tmp)
    by_width, by_height, real_heights = [], [], []
    for (path, _), result in zip(rows, ours, strict=True):
        real = _ink_box(Image.open(SAMPLE / path))
        mine = _ink_box(result.image) if result.ok else None
        if real is None or mine is None:
            continue
        real_heights.append(real[0])
        by_height.append(dpi * real[0] / mine[0])
        if mine[1] >= 60:  # short formulas give coarse ratios
            by_width.append(dpi * real[1] / mine[1])

    def percentiles(values: list[float]) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (5, 25, 50, 75, 95)}

    return {
        "task": "scale",
        "n": len(by_height),
        "rendered_share": round(sum(r.ok for r in ours) / len(ours), 4),
        "equivalent_dpi_by_width": percentiles(by_width),
        "equivalent_dpi_by_height": percentiles(by_height),
        "real_ink_height_px": percentiles(real_heights),
        "default_dpi": list(DEFAULT_DPI),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.splitlines()[0])
    parser.add_argument("--formulas", type=Path, default=DEFAULT_FORMULAS)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=RenderSettings.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", action="store_true", help="measure the real images' resolution instead")
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args(argv)
    if args.scale:
        print(json.dumps(scale()))
        return 0
    if not args.formulas.is_file():
        print(f"error: {args.formulas}: no such file", file=sys.stderr)
        return 1
    print(json.dumps(run(args.formulas, args.n, args.workers, args.batch_size, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
