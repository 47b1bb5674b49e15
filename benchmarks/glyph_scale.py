"""Which glyph size does a model read best at?  Chooses a model folder's ``glyph_scale``.

``prepare`` scales every image so its typical glyph is ``DEFAULT_GLYPH_HEIGHT`` pixels tall, the
size the training renders are scaled to.  A model need not read best at exactly that size: this
reads validation renders (never trained on) the way :class:`pix2tex.LatexOCR` reads user images, at
several multiples of it, and prints BLEU and edit distance per (dataset, scale), then the scale with
the best mean BLEU over the datasets (ties: the lower mean edit distance).  Pick the scale here,
never on a test set; store it with ``python -m pix2tex.checkpoint SRC DST --glyph-scale F``.
``--consensus N`` adds one row per dataset for reading at N sizes around the model's own
``glyph_scale`` and keeping the consensus (``LatexOCR(scales=N)``).  ``--change NAME`` reads the
images bolder, blurrier or coarser (:data:`benchmarks.glyph_estimators.CHANGES`), and
``--glyph-estimator`` measures their glyphs another way than the model folder says.

    python -m benchmarks.glyph_scale --checkpoint MODEL --data data/valid_im2latex_val.pkl,data/valid.pkl \\
        --limit 400 --scales 1.0,1.1,1.15,1.2,1.3 --json
    python -m benchmarks.glyph_scale --data ... --limit 400 --scales 1.2 --consensus 6 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator

from PIL import Image

from benchmarks.glyph_estimators import CHANGES
from pix2tex.config import ConfigError, check_glyph_scale
from pix2tex.dataset.dataset import Im2LatexDataset, load_image_gray
from pix2tex.inference import MAX_SCALES, LatexOCR
from pix2tex.metrics import bleu, edit_distance


def spread(n_items: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``n_items`` (all of them without a limit)."""
    if limit is None or limit >= n_items:
        return list(range(n_items))
    return [i * n_items // limit for i in range(limit)]


def sweep(checkpoint: str | None, datasets: list[str], scales: list[float], limit: int | None,
          batch_size: int = 16, consensus: int = 1, change: str = "none",
          glyph_estimator: str | None = None) -> Iterator[dict]:
    """One row per (dataset, scale): BLEU and edit distance of greedy readings of the dataset's images;
    with ``consensus`` > 1 also a row per dataset for the consensus of that many sizes."""
    for path in datasets:
        data = Im2LatexDataset.load(path)
        picked = spread(len(data.samples.paths), limit)
        alter = CHANGES[change][0]
        images: list = ([str(data.image_path(i)) for i in picked] if change == "none" else  # read as users' files
                        [Image.fromarray(alter(load_image_gray(data.image_path(i)))) for i in picked])
        references = [data.samples.labels[i] for i in picked]
        for scale in scales:
            ocr = LatexOCR(checkpoint, device="cpu", engine="torch", batch_size=batch_size, glyph_scale=scale,
                           glyph_estimator=glyph_estimator)
            start = time.perf_counter()
            predictions = [p.latex or "" for p in ocr.predict(images)]
            yield {"bench": "glyph_scale", "data": path, "n": len(picked), "glyph_scale": scale,
                   "glyph_estimator": ocr.glyph_estimator, "change": change,
                   "bleu": round(bleu(predictions, references), 4),
                   "edit_distance": round(edit_distance(predictions, references), 4),
                   "seconds": round(time.perf_counter() - start, 1)}
        if consensus > 1:
            ocr = LatexOCR(checkpoint, device="cpu", engine="torch", batch_size=batch_size, scales=consensus,
                           glyph_estimator=glyph_estimator)
            start = time.perf_counter()
            predictions = [p.latex or "" for p in ocr.predict(images)]
            yield {"bench": "glyph_scale_consensus", "data": path, "n": len(picked), "scales": consensus,
                   "glyph_scale": ocr.glyph_scale, "bleu": round(bleu(predictions, references), 4),
                   "edit_distance": round(edit_distance(predictions, references), 4),
                   "seconds": round(time.perf_counter() - start, 1)}


def best(rows: list[dict]) -> dict:
    """The scale with the highest BLEU averaged over the datasets; ties go to the lower edit distance."""
    scales = sorted({r["glyph_scale"] for r in rows})
    means = {s: (statistics.mean(r["bleu"] for r in rows if r["glyph_scale"] == s),
                 statistics.mean(r["edit_distance"] for r in rows if r["glyph_scale"] == s)) for s in scales}
    chosen = max(scales, key=lambda s: (means[s][0], -means[s][1]))
    return {"bench": "glyph_scale_best", "glyph_scale": chosen, "mean_bleu": round(means[chosen][0], 4),
            "mean_edit_distance": round(means[chosen][1], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.glyph_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    parser.add_argument("--data", required=True, help="comma-separated validation .pkl files")
    parser.add_argument("--scales", default="1.0,1.1,1.2,1.3", help="comma-separated glyph scales")
    parser.add_argument("--limit", type=int, help="images per dataset, spread evenly over it")
    parser.add_argument("--consensus", type=int, default=1, metavar="N",
                        help="also read at N sizes around the model's glyph_scale and keep the consensus")
    parser.add_argument("--change", choices=list(CHANGES), default="none",
                        help="read the images changed so (benchmarks.glyph_estimators)")
    parser.add_argument("--glyph-estimator", help="soft or stroke (default: the model folder's)")
    parser.add_argument("--json", action="store_true", help="JSON lines (the only output format)")
    args = parser.parse_args(argv)
    try:
        scales = [check_glyph_scale(float(s)) for s in args.scales.split(",")]
    except ValueError as exc:  # float() or the range check (ConfigError is a ValueError)
        detail = str(exc) if isinstance(exc, ConfigError) else "expected comma-separated numbers"
        parser.error(f"--scales {args.scales}: {detail}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not 1 <= args.consensus <= MAX_SCALES:
        parser.error(f"--consensus must be from 1 to {MAX_SCALES}")
    rows = []
    try:
        for row in sweep(args.checkpoint, args.data.split(","), scales, args.limit, consensus=args.consensus,
                         change=args.change, glyph_estimator=args.glyph_estimator):
            if row["bench"] == "glyph_scale":
                rows.append(row)
            print(json.dumps(row), flush=True)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(best(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
