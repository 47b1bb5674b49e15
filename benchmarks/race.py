"""Choose a training recipe by a measured race (successive halving on CPU seconds).

    python -m benchmarks.race --data DATA_DIR --out RACE_DIR [--rounds 8 16 32 64] [--eval-every 8]
    python -m benchmarks.race --out RACE_DIR --plot docs/race.png     # learning curves of a race
    python -m benchmarks.race --data DATA_DIR --out RACE_DIR --continue-run NAME   # the winner trains on

Every candidate is a set of ``--set`` overrides of ``pix2tex/model/settings/default.yaml``, trained
from scratch on the same data (``./create_data.sh`` on all of ../shared/data/formulas).  Budgets are
counted in the training process's CPU seconds (``max_cpu_minutes``), so candidates that share the
machine with other work are still compared fairly; two candidates train at a time, one thread each.
Every ``--eval-every`` CPU minutes a candidate's weights are scored, greedy, on the first 200 im2latex
renders of the validation split and on the first 200 real im2latex_sample images, and its
teacher-forced loss is measured with the true images and with the batch's images shuffled (the gap
says how much the model reads the image).  After each round the better half continues: by the mean
of the two BLEUs once some candidate reads (mean BLEU >= 0.05), by bits per character before that.
One JSON line per measurement goes to stdout and to
RACE_DIR/race.jsonl; a finished segment is never run again, so an interrupted race continues.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_CONFIG = REPO / "pix2tex" / "model" / "settings" / "default.yaml"
SAMPLE = REPO.parent / "shared" / "data" / "images" / "im2latex_sample"

NARROW = {"backbone_channels": [64, 128, 256], "stem_channels": 32, "backbone_norm": "batch", "mask_padding": True}
TOKENS = {"tokenizer": "{data}/tokenizer_tokens.json", "num_tokens": 640}
SCHEDULE = {"scheduler": "WarmupCosine", "max_lr": 2e-3, "warmup_steps": 400, "min_lr": 2e-5,
            "max_steps": 60000, "label_smoothing": 0.1}


@dataclass
class Candidate:
    name: str
    overrides: dict
    # (until CPU minute, overrides) phases: the run is resumed with the next phase's settings.
    phases: list[tuple[float, dict]] = field(default_factory=list)

    def settings_at(self, minute: float) -> dict:
        out = dict(self.overrides)
        for until, extra in self.phases:
            if minute <= until:
                out.update(extra)
                break
        return out

    def boundaries(self) -> list[float]:
        return [until for until, _ in self.phases]


CANDIDATES = [
    Candidate("default", {"max_steps": 4500}),
    Candidate("narrow", {"max_steps": 4500, **NARROW}),
    Candidate("narrow_tokens", {"max_steps": 4500, **NARROW, **TOKENS}),
    Candidate("recipe", {**NARROW, **TOKENS, **SCHEDULE}),
    Candidate("recipe_light_aug", {**NARROW, **TOKENS, **SCHEDULE}, [(24.0, {"augment_level": "light"})]),
    Candidate("recipe_short_first", {**NARROW, **TOKENS, **SCHEDULE}, [(4.0, {"max_label_tokens": 48})]),
]


def _train_args(settings: dict, data: Path, run: Path) -> list[str]:
    """The ``pix2tex.train`` command for a candidate's run ({data} in settings is the data folder)."""
    from pix2tex.train import override_args

    settings = {k: v.format(data=data) if isinstance(v, str) else v for k, v in settings.items()}
    args = [sys.executable, "-m", "pix2tex.train", "--config", str(BASE_CONFIG), "--no-progress",
            *override_args(settings)]
    return [*args, "--resume"] if (run / "last.pt").exists() else args


def train_segment(cand: Candidate, data: Path, out: Path, until: float) -> None:
    """Train (or resume) ``cand`` until its run has used ``until`` CPU minutes."""
    settings = {
        "data": f"{data}/train.pkl", "tokenizer": f"{data}/tokenizer.json", "valdata": None, "testdata": None,
        "model_path": str(out), "name": cand.name, "sample_freq": 10**9, "num_workers": 0, "epochs": 1000,
        "log_every": 25, **cand.settings_at(until - 1e-6), "max_cpu_minutes": until,
    }
    with open(out / f"{cand.name}.log", "a") as log:
        subprocess.run(_train_args(settings, data, out / cand.name), check=True, stdout=log,
                       stderr=subprocess.STDOUT, env=_one_thread_env(), cwd=REPO)


def continue_run(cand: Candidate, data: Path, out: Path, threads: int = 2) -> int:
    """Go on training ``cand``'s race run with no CPU budget: all cores, bf16 where the CPU has it,
    validation on im2latex renders every 500 steps (``best/`` is picked on them).  The standing
    training job of the project after a race; stops on SIGTERM with its state saved."""
    settings = {
        "data": f"{data}/train.pkl", "tokenizer": f"{data}/tokenizer.json", "testdata": None,
        "valdata": f"{data}/valid_im2latex_val.pkl", "model_path": str(out), "name": cand.name,
        "sample_freq": 500, "valbatches": 8, "testbatchsize": 25, "num_workers": 1, "epochs": 1000, "log_every": 25,
        **cand.settings_at(float("inf")), "max_cpu_minutes": None, "cpu_bf16": True, "length_pool": 32,
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(out / f"{cand.name}.log", "a") as log:
        return subprocess.run(_train_args(settings, data, out / cand.name), stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO).returncode


def _one_thread_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def evaluate(run: Path, data: Path, n: int = 200) -> dict:
    """Scores of ``run/last`` (see the module docstring); runs in a child process, one thread."""
    code = f"import json, benchmarks.race as r; print(json.dumps(r._evaluate({str(run)!r}, {str(data)!r}, {n})))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env=_one_thread_env(), cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _evaluate(run: str, data: str, n: int) -> dict:
    import torch

    from pix2tex.checkpoint import load_model_folder, load_resume_state
    from pix2tex.dataset.dataset import Im2LatexDataset
    from pix2tex.eval import evaluate_dataset, evaluate_folder

    torch.set_num_threads(1)
    folder = Path(run) / "last"
    state = load_resume_state(Path(run) / "last.pt")
    val, _ = evaluate_dataset(str(folder), f"{data}/valid_im2latex_val.pkl", limit=n, batch_size=25, progress=False)
    real, _ = evaluate_folder(str(folder), str(SAMPLE), str(SAMPLE / "labels.tsv"), limit=n, batch_size=25,
                              device="cpu", progress=False)
    # Teacher-forced loss in bits per character (comparable across vocabularies), with the true
    # images and with each batch's images rotated by one (same images, wrong labels).
    model, config, tokenizer, _ = load_model_folder(str(folder), "cpu")
    ds = Im2LatexDataset.load(f"{data}/valid_im2latex_val.pkl")
    ds.set_tokenizer(tokenizer)
    ds.update(batchsize=25, shuffle=False, test=True, keep_smaller_batches=True, max_seq_len=config.max_seq_len,
              max_dimensions=(config.max_width, config.max_height), patch_size=config.patch_size)
    nll = {"true": 0.0, "shuffled": 0.0}
    chars = 0
    with torch.inference_mode():
        for indices in ds.batches(0)[: math.ceil(n / 25)]:
            batch = ds.prepare_data(indices)
            for kind, order in (("true", None), ("shuffled", torch.roll(torch.arange(len(indices)), 1))):
                images = batch.images if order is None else batch.images[order]
                sizes = batch.sizes if order is None else batch.sizes[order]
                out = model(images, batch.ids, sizes=sizes)
                tokens = int((batch.ids[:, 1:] != 0).sum())
                nll[kind] += float(out.loss) * tokens
            chars += sum(len(label.replace(" ", "")) for label in batch.labels)
    bits = {k: v / math.log(2) / chars for k, v in nll.items()}
    return {
        "step": state["step"], "cpu_min": round(state.get("cpu_seconds", 0.0) / 60, 2),
        "val_bleu": round(val.bleu, 4), "val_edit": round(val.edit_distance, 4),
        "real_bleu": round(real.bleu, 4), "real_edit": round(real.edit_distance, 4),
        "bpc": round(bits["true"], 4), "bpc_shuffled": round(bits["shuffled"], 4),
        "image_gain_bpc": round(bits["shuffled"] - bits["true"], 4),
    }


READS = 0.05  # mean BLEU from which a candidate counts as reading at all


def rank_key(point: dict, field: list[dict]) -> tuple[float, float]:
    """Sort key (best first): mean greedy BLEU once some candidate reads (BLEU >= READS), then bits
    per character.  Before anyone reads, BLEU differences are noise (0.000 against 0.005) and the
    teacher-forced loss is the signal."""
    reading = max((p["val_bleu"] + p["real_bleu"]) / 2 for p in field) >= READS
    bleu = (point["val_bleu"] + point["real_bleu"]) / 2 if reading else 0.0
    return -bleu, point["bpc"]


def _done_points(log: Path) -> dict[tuple[str, float], dict]:
    if not log.exists():
        return {}
    points = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        points[(rec["candidate"], rec["budget"])] = rec
    return points


def run_race(data: Path, out: Path, rounds: list[float], eval_every: float, names: list[str] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "race.jsonl"
    alive = [c for c in CANDIDATES if names is None or c.name in names]

    def advance(cand: Candidate, upto: float) -> dict:
        """Train ``cand`` to ``upto`` CPU minutes, scoring every eval_every minutes; the last point."""
        points = _done_points(log)
        marks = sorted({*(eval_every * k for k in range(1, int(upto / eval_every) + 1)), upto,
                        *(b for b in cand.boundaries() if b < upto)})
        last = None
        for mark in marks:
            if (cand.name, mark) in points:
                last = points[(cand.name, mark)]
                continue
            start = time.time()
            train_segment(cand, data, out, mark)
            rec = {"candidate": cand.name, "budget": mark, **evaluate(out / cand.name, data),
                   "wall_s": round(time.time() - start, 1)}
            with open(log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            last = rec
        return last

    for r, budget in enumerate(rounds):
        with ThreadPoolExecutor(2) as pool:
            finals = list(pool.map(lambda c, budget=budget: advance(c, budget), alive))
        ranked = sorted(zip(alive, finals, strict=True), key=lambda cf: rank_key(cf[1], finals))
        print(json.dumps({"round": r + 1, "budget": budget,
                          "ranking": [c.name for c, _ in ranked]}), flush=True)
        if r + 1 < len(rounds):
            alive = [c for c, _ in ranked[: max(1, len(ranked) // 2)]]


def plot(out: Path, png: Path) -> None:
    from benchmarks.plotting import figure, save

    records = [json.loads(line) for line in (out / "race.jsonl").read_text().splitlines()]
    fig, axes = figure(3, 15)
    for name in dict.fromkeys(r["candidate"] for r in records):
        rows = sorted((r for r in records if r["candidate"] == name), key=lambda r: r["cpu_min"])
        x = [r["cpu_min"] for r in rows]
        axes[0].plot(x, [r["real_bleu"] for r in rows], marker="o", label=name)
        axes[1].plot(x, [r["val_bleu"] for r in rows], marker="o", label=name)
        axes[2].plot(x, [r["bpc"] for r in rows], marker="o", label=name)
    save(fig, axes, ("BLEU, 200 real im2latex_sample images", "BLEU, 200 im2latex validation renders",
                     "bits per character (teacher-forced)"), "CPU minutes of training", png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.race", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder written by create_data.sh")
    parser.add_argument("--out", type=Path, required=True, help="race folder (runs, logs, race.jsonl)")
    parser.add_argument("--rounds", type=float, nargs="+", default=[8, 16, 32, 64],
                        help="cumulative CPU-minute budget of each round")
    parser.add_argument("--eval-every", type=float, default=8.0, help="CPU minutes between scores")
    parser.add_argument("--only", nargs="+", help="race only these candidates")
    parser.add_argument("--plot", type=Path, help="write the learning-curve PNG of a race and exit")
    parser.add_argument("--continue-run", metavar="NAME",
                        help="go on training this candidate's run without a budget (the standing job)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        plot(args.out, args.plot)
        return 0
    if args.continue_run is not None:
        if args.data is None:
            parser.error("--continue-run needs --data")
        cand = next((c for c in CANDIDATES if c.name == args.continue_run), None)
        if cand is None:
            parser.error(f"unknown candidate {args.continue_run!r}; known: {[c.name for c in CANDIDATES]}")
        return continue_run(cand, args.data.resolve(), args.out.resolve())
    if args.data is None:
        parser.error("--data is needed to run a race")
    run_race(args.data.resolve(), args.out.resolve(), args.rounds, args.eval_every, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
