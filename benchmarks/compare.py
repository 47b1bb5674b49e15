"""Compare two models' predictions on the same images (the files `pix2tex.eval --out` writes).

    python -m benchmarks.compare OLD.tsv NEW.tsv [--resamples 1000] [--seed 0]

One JSON line: both models' scores, on how many images the new model's edit distance is lower or
higher, a bootstrap over the images of the BLEU gain (mean, 5th and 95th percentile), and how many
outputs of each run to 200 tokens or more (a sign of runaway repetition).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from pix2tex.metrics import bleu_from_statistics, bleu_statistics, edit_distances, score
from pix2tex.normalize import latex_tokens

LONG = 200  # tokens


def read_predictions(path: Path) -> dict[str, tuple[str, str]]:
    """image -> (prediction, reference) from an eval TSV (header: image, prediction, reference)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {r["image"]: (r["prediction"], r["reference"]) for r in rows}


def compare(old: dict[str, tuple[str, str]], new: dict[str, tuple[str, str]], resamples: int = 1000,
            seed: int = 0) -> dict:
    images = sorted(old.keys() & new.keys())
    if not images:
        raise ValueError("the two files share no image")
    if resamples < 1:
        raise ValueError(f"--resamples must be at least 1, got {resamples}")
    differ = [i for i in images if old[i][1] != new[i][1]]
    if differ:
        raise ValueError(f"{len(differ)} images have different references in the two files (e.g. {differ[0]})")
    refs = [old[i][1] for i in images]
    a, b = [old[i][0] for i in images], [new[i][0] for i in images]
    distances = list(zip(edit_distances(a, refs), edit_distances(b, refs), strict=True))
    stats_a, stats_b = bleu_statistics(a, refs), bleu_statistics(b, refs)
    rng = random.Random(seed)
    gains = []
    for _ in range(resamples):
        pick = [rng.randrange(len(images)) for _ in images]
        gains.append(bleu_from_statistics([sum(c) for c in zip(*(stats_b[k] for k in pick), strict=True)])
                     - bleu_from_statistics([sum(c) for c in zip(*(stats_a[k] for k in pick), strict=True)]))
    gains.sort()
    return {
        "n": len(images), "old": score(a, refs).as_dict(), "new": score(b, refs).as_dict(),
        "edit_distance_lower": sum(d_new < d_old for d_old, d_new in distances),
        "edit_distance_higher": sum(d_new > d_old for d_old, d_new in distances),
        # nearest-rank percentiles of the resampled gains
        "bleu_gain_mean": sum(gains) / len(gains), "bleu_gain_p05": gains[math.ceil(0.05 * len(gains)) - 1],
        "bleu_gain_p95": gains[math.ceil(0.95 * len(gains)) - 1],
        "long_outputs_old": sum(len(latex_tokens(p)) >= LONG for p in a),
        "long_outputs_new": sum(len(latex_tokens(p)) >= LONG for p in b),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = compare(read_predictions(args.old), read_predictions(args.new), args.resamples, args.seed)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"old_file": str(args.old), "new_file": str(args.new), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
