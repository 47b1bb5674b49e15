"""Training with 1 and N processes (torchrun, Gloo, one thread each) and the cost of the gradient all-reduce.

    python -m benchmarks.ddp --data DATA_DIR [--procs 1 2] [--steps 30] --json
    python -m benchmarks.ddp --data DATA_DIR --standing [--steps 40] --json

One JSON line per process count: the median samples/s of steps 6..``--steps`` of real
``pix2tex.train`` runs (recipe.yaml, the real dataset, validation excluded, one thread per process),
then one line with the median time of an all-reduce of the recipe model's gradients (5.5 M floats)
between two processes.

``--standing``: the standing run's settings instead (continue.yaml with the race winner's data and
corpus weights, bf16, length pools, from the bundled weights) in the three ways two cores can run
it: one process with two threads, one process with one thread, two processes (torchrun) with one
thread each.  One JSON line each: median samples/s over steps 6..``--steps`` (the same batches in
each layout: the order depends only on the seed).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.train_step import training_rate

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "pix2tex" / "model" / "settings" / "recipe.yaml"

ALLREDUCE = r"""
import json, statistics, time, torch, torch.distributed as dist
from pix2tex.config import load_config
from pix2tex.models import get_model
dist.init_process_group("gloo")
model = get_model(load_config(%r, check_files=False).model)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
times = []
for _ in range(25):
    dist.barrier()
    t = time.perf_counter(); dist.all_reduce(flat); times.append(time.perf_counter() - t)
if dist.get_rank() == 0:
    median = round(statistics.median(times[5:]), 5)
    print(json.dumps({"bench": "ddp_allreduce", "floats": flat.numel(), "median_s": median}))
dist.destroy_process_group()
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
            "--master_port", str(_port())]


def throughput(data: Path, procs: int, steps: int) -> dict:
    # fp32 and size-only batches, as measured in RESULTS (recipe.yaml now turns bf16 and pools on).
    settings = {"data": f"{data}/train.pkl", "tokenizer": f"{data}/tokenizer_tokens.json", "num_workers": 0,
                "cpu_bf16": False, "length_pool": 0}
    rate = training_rate(RECIPE, settings, steps, threads=1, launcher=None if procs == 1 else _torchrun(procs))
    return {"bench": "ddp_throughput", "processes": procs, "threads_each": 1, "steps": steps,
            "samples_per_s": round(rate, 2)}


def standing(data: Path, steps: int) -> list[dict]:
    """Samples/s of the standing run's settings per layout of two cores (see the module doc)."""
    from benchmarks.levers import BASE_CONFIG, _settings

    settings = {k: v for k, v in _settings("papers", data, data, None).items()
                if k not in ("model_path", "name", "max_cpu_minutes", "valdata")}
    rows = []
    for procs, threads in ((1, 2), (1, 1), (2, 1)):
        rate = training_rate(BASE_CONFIG, settings, steps, threads=threads,
                             launcher=None if procs == 1 else _torchrun(procs))
        rows.append({"bench": "standing_layout", "processes": procs, "threads_each": threads, "steps": steps,
                     "samples_per_s": round(rate, 2)})
    return rows


def allreduce() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "allreduce.py"
        script.write_text(ALLREDUCE % str(RECIPE))
        done = subprocess.run([*_torchrun(2), str(script)], check=True, capture_output=True, text=True, env=env,
                              cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--standing", action="store_true", help="the standing run's settings in 3 layouts")
    parser.add_argument("--json", action="store_true", help="JSON lines (the default output anyway)")
    args = parser.parse_args(argv)
    if args.standing:
        for row in standing(args.data.resolve(), args.steps):
            print(json.dumps(row), flush=True)
        return 0
    for n in args.procs:
        print(json.dumps(throughput(args.data.resolve(), n, args.steps)), flush=True)
    print(json.dumps(allreduce()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
