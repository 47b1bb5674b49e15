"""Deduplicate rendered labels and split them into train / validation / test without overlap.

``python -m pix2tex.dataset.split --labels DIR/labels.tsv… --out OUT [--val 0.02] [--test 0.02] [--seed 0]``

Two samples with the same normalized formula always land in the same split (only the first is
kept), so no test formula is ever seen in training.  The split of a formula depends only on the
formula and the seed (a hash), so adding formulas to a corpus does not move existing ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pix2tex.dataset.dataset import DatasetError, read_labels
from pix2tex.fileio import atomic_write_text

__all__ = ["assign_split", "split_labels", "main"]

SPLITS = ("train", "valid", "test")


def assign_split(formula: str, val: float, test: float, seed: int) -> str:
    """The split of a normalized formula: a stable function of (formula, seed)."""
    digest = hashlib.sha256(f"{seed}\0{formula}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < test else "valid" if u < test + val else "train"


def split_labels(pairs: Sequence[tuple[str, str]], val: float, test: float,
                 seed: int) -> dict[str, list[tuple[str, str]]]:
    """Group (image path, normalized label) pairs into splits, one sample per distinct label."""
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for image, label in pairs:
        if label in seen:
            continue
        seen.add(label)
        out[assign_split(label, val, test, seed)].append((image, label))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.dataset.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", nargs="+", required=True, help="labels.tsv files written by the renderer")
    parser.add_argument("--out", required=True, help="folder for train.tsv, valid.tsv, test.tsv")
    parser.add_argument("--val", type=float, default=0.02, help="share of formulas for validation")
    parser.add_argument("--test", type=float, default=0.02, help="share of formulas for test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (0 <= args.val < 1 and 0 <= args.test < 1 and args.val + args.test < 1):
        print(f"error: --val {args.val} and --test {args.test} must be shares in [0, 1) summing below 1",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    pairs: list[tuple[str, str]] = []
    try:
        for labels in args.labels:
            folder = Path(labels).resolve().parent
            for image, label in read_labels(labels):
                if image is None:
                    raise DatasetError(f"{labels}: expected 'path<TAB>latex' lines")
                # Paths in the split files are relative to OUT so the folder can move as a whole.
                pairs.append((os.path.relpath(folder / image, out), label))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    splits = split_labels(pairs, args.val, args.test, args.seed)
    for name, rows in splits.items():
        atomic_write_text(out / f"{name}.tsv", "".join(f"{i}\t{latex}\n" for i, latex in rows))
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    print(f"{len(pairs)} samples, {sum(map(len, splits.values()))} distinct formulas: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
