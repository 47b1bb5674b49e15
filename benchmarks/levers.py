"""Race levers from the bundled model's weights, on equal CPU budgets.

    python -m benchmarks.levers --data DATA --out RACE [--budget 45] [--only NAME…]   # train
    python -m benchmarks.levers --data DATA --out RACE --score [--glyph-scale 1.4]    # score, compare
    python -m benchmarks.levers --data DATA --out RACE --score --models FOLDER…       # other model folders
    python -m benchmarks.levers --out RACE --plot docs/levers.png                      # curves

Every candidate is a set of ``--set`` overrides of ``pix2tex/model/settings/continue.yaml`` (the
bundled weights, a fresh optimizer, the learning rate warmed back up, one long cosine), so the
winner simply trains on with ``--resume``.  All candidates train at once, one thread each and no
DataLoader worker, until their own process has used ``--budget`` CPU minutes
(``max_cpu_minutes``): CPU seconds, not wall time, are what they share fairly.  Each validates
every 200 steps (its metrics.jsonl) on 200 of the held-out real im2latex_val_real images
(``DATA/real/heldout.pkl``): the first race found that validation on renders did not tell the
candidates apart where real images did.

``--score`` reads each candidate's ``last/`` (and the bundled model, as ``bundled``) greedily on
all of ``../shared/data/images/im2latex_sample`` and on the held-out im2latex_val_real images
(``DATA/real/heldout.tsv``, whose formulas no candidate trained on); the validation renders are
scored by training itself (the ``val_*`` lines of each run's metrics.jsonl, before the second
race; ``DATA/valid_im2latex_val.pkl``).  Predictions go to
``RACE/scores/NAME.SET.tsv`` and one JSON line per (candidate, set) to
``RACE/scores.jsonl``, with the bootstrap BLEU gain over the bundled model (benchmarks.compare).

DATA is the folder the standing run's datasets are in: ``train.pkl`` (the six rendered corpora),
``train_papers.pkl`` (the same plus ``real/train.pkl``, the im2latex_val_real images of the
training split), ``valid_im2latex_val.pkl`` and ``real/heldout.tsv`` and ``.pkl``
(``python -m benchmarks.standing_data``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.compare import compare, read_predictions

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "pix2tex" / "model" / "settings" / "continue.yaml"
BUNDLED = REPO / "pix2tex" / "model" / "checkpoints" / "default"
SHARED_IMAGES = REPO.parent / "shared" / "data" / "images"

# Toward paper formulas: arXiv and im2latex corpora as they are or more, the real im2latex
# renders (the benchmark's own pipeline) four times, the short school and chemistry formulas a
# quarter (the model reads those already: 38 % of the six corpora's samples).
PAPERS = {"data": "{data}/train_papers.pkl",
          "corpus_weights": {"im2latex_val": 2, "im2latex170k_arxiv2018": 2, "arxiv_display_math": 1,
                             "im2latex_val_real": 4, "k12_exam": 0.25, "hme100k": 0.25, "chem_units": 0.25}}
# Twice the decoder depth: three blocks of (self-attention, cross-attention, feed-forward) stacked
# on the bundled three, their output projections at zero (pix2tex.train.grow_decoder).
DEEPER = {"num_layers": 6}

CANDIDATES: dict[str, dict] = {
    "baseline": {},
    "papers": PAPERS,
    "deeper": DEEPER,
    "papers_deeper": {**PAPERS, **DEEPER},
}


def _settings(name: str, data: Path, out: Path, budget: float | None) -> dict:
    overrides = {k: v.format(data=data) if isinstance(v, str) else v for k, v in CANDIDATES[name].items()}
    return {"data": f"{data}/train.pkl", "valdata": f"{data}/real/heldout.pkl", "model_path": str(out),
            "name": name, "sample_freq": 200, "num_workers": 0, "max_cpu_minutes": budget, **overrides}


def train_command(name: str, data: Path, out: Path, budget: float | None) -> list[str]:
    """The ``pix2tex.train`` command of a candidate (``--resume`` once its run has a state)."""
    from pix2tex.train import override_args

    args = [sys.executable, "-m", "pix2tex.train", "--config", str(BASE_CONFIG), "--no-progress",
            *override_args(_settings(name, data, out, budget))]
    return [*args, "--resume"] if (out / name / "last.pt").exists() else args


def train(name: str, data: Path, out: Path, budget: float) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out / f"{name}.log", "a") as log:
        return subprocess.run(["nice", "-n", "19", *train_command(name, data, out, budget)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode


def score_sets(data: Path) -> dict[str, list[str]]:
    """The scored sets: name -> the ``pix2tex.eval`` arguments that read it."""
    sample = SHARED_IMAGES / "im2latex_sample"
    return {
        "sample": ["--images", str(sample), "--labels", str(sample / "labels.tsv")],
        "real_heldout": ["--images", str(SHARED_IMAGES / "im2latex_val_real"), "--labels",
                         str(data / "real" / "heldout.tsv")],
    }


def score(data: Path, out: Path, models: dict[str, Path], glyph_scale: float | None) -> None:
    """Score the bundled model and ``models`` (name -> model folder) on :func:`score_sets`."""
    folder = out / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    models = {"bundled": BUNDLED, **models}
    for set_name, args in score_sets(data).items():
        for model, checkpoint in models.items():
            tsv = folder / f"{model}.{set_name}.tsv"
            if not tsv.exists():
                extra = ["--glyph-scale", str(glyph_scale)] if glyph_scale else []
                subprocess.run([sys.executable, "-m", "pix2tex.eval", "--checkpoint", str(checkpoint), *args,
                                *extra, "--batch-size", "16", "--out", str(tsv), "--json"],
                               check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            result = compare(read_predictions(folder / f"bundled.{set_name}.tsv"), read_predictions(tsv))
            rec = {"candidate": model, "set": set_name, "n": result["n"], **result["new"],
                   "bleu_gain_vs_bundled": round(result["bleu_gain_mean"], 4),
                   "bleu_gain_p05": round(result["bleu_gain_p05"], 4),
                   "bleu_gain_p95": round(result["bleu_gain_p95"], 4)}
            with open(out / "scores.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)


def plot(out: Path, png: Path) -> None:
    """Validation BLEU (the weight average solid, the raw weights dashed) and the training loss of
    each candidate against its CPU minutes."""
    from benchmarks.plotting import figure, save

    fig, axes = figure(2, 10)
    for name in CANDIDATES:
        metrics = out / name / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        train = [r for r in rows if "loss" in r and "cpu_s" in r]
        val = [r for r in rows if "val_bleu" in r]
        # a validation's CPU time: that of the last logged step at or before it (the budget's end
        # is validated at a step that is not logged)
        cpu_at = [max((t["cpu_s"] for t in train if t["step"] <= r["step"]), default=0.0) / 60 for r in val]
        line, = axes[0].plot(cpu_at, [r["val_bleu"] for r in val], marker="o", label=name)
        if any("raw_val_bleu" in r for r in val):
            axes[0].plot(cpu_at, [r.get("raw_val_bleu") for r in val], marker=".", linestyle="--",
                         color=line.get_color())
        window = 8  # logged points (200 steps at log_every 25): one batch's loss swings with its formulas
        windows = [train[max(0, k - window + 1): k + 1] for k in range(len(train))]
        smooth = [sum(r["loss"] for r in w) / len(w) for w in windows]
        axes[1].plot([r["cpu_s"] / 60 for r in train], smooth, label=name)
    save(fig, axes, ("validation BLEU (solid: weight average; dashed: raw weights)",
                     "training loss (mean of the last 8 logged steps)"), "CPU minutes of training", png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the standing run's dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="race folder (runs, logs, scores)")
    parser.add_argument("--budget", type=float, default=45.0, help="CPU minutes per candidate")
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="these candidates only")
    parser.add_argument("--score", action="store_true", help="score the candidates' last/ folders")
    parser.add_argument("--models", nargs="+", type=Path, metavar="FOLDER",
                        help="with --score: these model folders instead of the candidates' (named by folder)")
    parser.add_argument("--glyph-scale", type=float, help="read real images at this glyph scale (default: each "
                                                          "model folder's)")
    parser.add_argument("--plot", type=Path, help="write the learning curves of a race and exit")
    args = parser.parse_args(argv)
    names = args.only or list(CANDIDATES)
    if args.plot is not None:
        plot(args.out, args.plot)
        return 0
    if args.data is None:
        parser.error("--data is needed to train or score")
    data, out = args.data.resolve(), args.out.resolve()
    if args.score:
        models = ({p.name: p.resolve() for p in args.models} if args.models is not None
                  else {n: out / n / "last" for n in names})
        score(data, out, models, args.glyph_scale)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(names)) as pool:
        codes = list(pool.map(lambda n: train(n, data, out, args.budget), names))
    for name, code in zip(names, codes, strict=True):
        print(json.dumps({"candidate": name, "returncode": code}))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
