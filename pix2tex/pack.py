"""Pack a compact training set into one file, for training on a machine that has no TeX.

    python -m pix2tex.pack --data data/train.pkl --valdata data/valid_im2latex_val.pkl \
        --tokenizer data/tokenizer_tokens.json --out gpu/pack.tar [--max-mb 40] [--seed 0]

A lent GPU machine has no TeX and takes a working tree of at most 64 MiB, so thousands of PNG
files and the renderer are out.  The pack is one uncompressed tar (PNGs are compressed already):
``train.pkl``, ``valid.pkl``, ``tokenizer.json`` and the images under ``render/<corpus>/images/``
(the layout create_data.sh writes, so corpus weights keep working).  Training samples are drawn
at random (``--seed``) until ``--max-mb`` is reached.  Its datasets name their image folder
relative to themselves, so ``tar -xf pack.tar -C DIR`` gives ``DIR/train.pkl`` that trains from
anywhere: ``python -m pix2tex.train --config … --set data=DIR/train.pkl --set valdata=DIR/valid.pkl
--set tokenizer=DIR/tokenizer.json``.  :func:`unpack` is the safe way to extract it (no path may
leave the target folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pix2tex.dataset.dataset import DatasetError, Im2LatexDataset
from pix2tex.fileio import atomic_path

__all__ = ["pack", "unpack", "main"]


def _subset(ds: Im2LatexDataset, indices: list[int]) -> Im2LatexDataset:
    """A copy of ``ds`` holding ``indices`` only, with its images under one relative root ('.')."""
    out = Im2LatexDataset(**ds.to_dict()["settings"])
    rows = ds.samples.subset(indices)
    out.samples = dataclasses.replace(rows, roots=(".",), root_ids=[0] * len(indices),
                                      paths=[_member(ds, i) for i in indices])
    return out


def _member(ds: Im2LatexDataset, index: int) -> str:
    """The image's name inside the pack: render/<corpus>/images/<file>."""
    return f"render/{ds.corpus(index) or 'data'}/images/{Path(ds.paths[index]).name}"


def pack(data: str | Path, tokenizer: str | Path, out: str | Path, *, valdata: str | Path | None = None,
         max_mb: float = 40.0, seed: int = 0) -> dict[str, int]:
    """Write the pack; returns how many training and validation samples it holds and its size."""
    train = Im2LatexDataset.load(data)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    budget = int(max_mb * 2**20)
    chosen, size = [], 0
    for i in order:
        n = train.image_path(i).stat().st_size + 512  # tar header per member
        if size + n > budget:
            break
        chosen.append(i)
        size += n
    sets = {"train.pkl": (train, sorted(chosen))}
    if valdata is not None:
        val = Im2LatexDataset.load(valdata)
        sets["valid.pkl"] = (val, list(range(len(val))))
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar, tempfile.TemporaryDirectory() as work:
        tar.add(str(tokenizer), arcname="tokenizer.json")
        for name, (ds, indices) in sets.items():
            sub = _subset(ds, indices)
            sub.tokenizer_path = None
            sub.save(Path(work) / name)
            tar.add(str(Path(work) / name), arcname=name)
            for i, member in zip(indices, sub.paths, strict=True):
                tar.add(str(ds.image_path(i)), arcname=member)
    return {"train": len(chosen), "valid": len(sets["valid.pkl"][1]) if valdata is not None else 0,
            "bytes": Path(out).stat().st_size}


def unpack(archive: str | Path, target: str | Path) -> Path:
    """Extract a pack into ``target``; refuses members that are not plain files inside it."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r") as tar:
        # The 'data' filter refuses absolute paths, '..', links leaving the folder and device files.
        tar.extractall(target, filter="data")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.pack", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="training dataset .pkl (create_data.sh)")
    parser.add_argument("--valdata", help="validation dataset .pkl, packed whole")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json the run trains with")
    parser.add_argument("--out", required=True, help="the pack (.tar)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="size budget of the training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if not Path(args.tokenizer).is_file():
            raise DatasetError(f"{args.tokenizer}: tokenizer file not found")
        info = pack(args.data, args.tokenizer, args.out, valdata=args.valdata, max_mb=args.max_mb, seed=args.seed)
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {info['train']} training and {info['valid']} validation samples, "
          f"{info['bytes'] / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
