"""The standing run's data folder, from ../shared alone (a new machine starts here).

    python -m benchmarks.standing_data --out ../data [--workers 2]

Renders the six formula files of ``../shared/data/formulas`` with TeX (a file whose render
finished before is kept), splits them as ``create_data.sh`` does (by a hash of the normalized
formula: 2 % validation, 2 % test), and builds the datasets with the **bundled** tokenizer and
the "stroke" glyph estimator, so that training goes on from the bundled weights
(``pix2tex/model/settings/continue.yaml``):

- ``train.pkl``: the six corpora's training splits, one dataset per corpus joined
  (``train_<corpus>.pkl`` are kept too); ``valid_im2latex_val.pkl``: the im2latex validation renders;
- ``real/train.pkl`` and ``real/heldout.tsv``: the real im2latex_val_real images whose formulas fall
  in the training split, and those in the validation or test split (never trained on: a real-image
  check beside im2latex_sample); ``real/heldout.pkl``: the held-out ones as a dataset, what the
  race validates on (``valdata``: real images tell candidates apart where renders do not);
- ``train_papers.pkl``: ``train.pkl`` and ``real/train.pkl`` joined.

``--glyph-estimator stroke_capped`` builds the same datasets measured with that estimator under
``OUT/stroke_capped/`` (renders and splits shared; takes only the building part).

On this 2-core machine it takes about 20 minutes (rendering ~15, building ~5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pix2tex.preprocess import GLYPH_ESTIMATORS

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
TOKENIZER = REPO / "pix2tex" / "model" / "checkpoints" / "default" / "tokenizer.json"
# Paper corpora first: a run that starts before the rest are done has them.
CORPORA = ("im2latex_val", "im2latex170k_arxiv2018", "arxiv_display_math", "k12_exam", "hme100k", "chem_units")
REAL = "im2latex_val_real"


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=REPO)


def _dataset(images: Path, labels: Path, pkl: Path, estimator: str) -> None:
    pkl.parent.mkdir(parents=True, exist_ok=True)
    _run("pix2tex.dataset.dataset", "-i", str(images), "-e", str(labels), "-t", str(TOKENIZER),
         "--glyph-estimator", estimator, "-o", str(pkl))


def split_real(out: Path) -> tuple[Path, Path]:
    """real/train.tsv (paths under ../shared/data/images, so the corpus is im2latex_val_real) and
    real/heldout.tsv (paths under the im2latex_val_real folder, as pix2tex.eval --images reads them)."""
    from pix2tex.dataset.dataset import read_labels
    from pix2tex.dataset.split import assign_split
    from pix2tex.fileio import atomic_write_text
    from pix2tex.normalize import normalize

    train, heldout = [], []
    for image, latex in read_labels(SHARED / "images" / REAL / "labels.tsv"):
        label = normalize(latex)
        if label:
            (train if assign_split(label, 0.02, 0.02, 0) == "train" else heldout).append((image, latex))
    (out / "real").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "real" / "train.tsv", "".join(f"{REAL}/{i}\t{latex}\n" for i, latex in train))
    atomic_write_text(out / "real" / "heldout.tsv", "".join(f"{i}\t{latex}\n" for i, latex in heldout))
    return out / "real" / "train.tsv", out / "real" / "heldout.tsv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standing_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the data folder (made if missing)")
    parser.add_argument("--workers", type=int, default=2, help="TeX processes and dataset builds at once")
    parser.add_argument("--glyph-estimator", default="stroke", choices=GLYPH_ESTIMATORS,
                        help="how the datasets measure glyphs (default: stroke, the bundled model's); any "
                             "other writes its datasets (the .pkl files) under OUT/<estimator>/, beside "
                             "the stroke ones, from the same renders and splits")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    est = args.glyph_estimator
    sets = out if est == "stroke" else out / est  # where the .pkl files go
    out.mkdir(parents=True, exist_ok=True)
    for name in CORPORA:
        render = out / "render" / name
        if not (render / "labels.tsv").exists():
            _run("pix2tex.render", "--formulas", str(SHARED / "formulas" / f"{name}.txt"), "--out",
                 str(render), "--workers", str(args.workers))
    _run("pix2tex.dataset.split", "--labels", *(str(out / "render" / n / "labels.tsv") for n in CORPORA),
         "--out", str(out))

    def build(split: str, name: str) -> Path:
        rows = [line for line in (out / f"{split}.tsv").read_text().splitlines(keepends=True)
                if line.startswith(f"render/{name}/")]
        (out / f"{split}_{name}.tsv").write_text("".join(rows))
        _dataset(out, out / f"{split}_{name}.tsv", sets / f"{split}_{name}.pkl", est)
        return sets / f"{split}_{name}.pkl"

    real_train, real_heldout = split_real(out)
    with ThreadPoolExecutor(args.workers) as pool:
        parts = list(pool.map(lambda n: build("train", n), CORPORA))
        pool.submit(build, "valid", "im2latex_val").result()
        pool.submit(_dataset, SHARED / "images", real_train, sets / "real" / "train.pkl", est).result()
        pool.submit(_dataset, SHARED / "images" / REAL, real_heldout, sets / "real" / "heldout.pkl", est).result()
    _run("pix2tex.dataset.dataset", "--combine", *map(str, parts), "-o", str(sets / "train.pkl"))
    _run("pix2tex.dataset.dataset", "--combine", str(sets / "train.pkl"), str(sets / "real" / "train.pkl"),
         "-o", str(sets / "train_papers.pkl"))
    print(f"done: {sets}/train.pkl, train_papers.pkl, valid_im2latex_val.pkl, real/heldout.pkl; {out}/real/heldout.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
