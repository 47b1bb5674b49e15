"""torchrun + DistributedDataParallel on the CPU (Gloo), with real data: two processes train like one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pix2tex.dataset.dataset import Im2LatexDataset
from pix2tex.tokenizer import LatexTokenizer
from tests.helpers import REPO, SAMPLE

pytestmark = [pytest.mark.slow]

DEBUG = REPO / "pix2tex" / "model" / "settings" / "debug.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    full = Im2LatexDataset(SAMPLE / "labels.tsv", SAMPLE)
    full.save(work / "train.pkl")
    LatexTokenizer.train(full.labels, 400).save(work / "tok.json")
    return work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data: Path, name: str, steps: int, **extra) -> list[str]:
    settings = {"data": data / "train.pkl", "tokenizer": data / "tok.json", "valdata": "null", "name": name,
                "max_steps": steps, "batchsize": 8, "num_workers": 0, "num_tokens": 400, "log_every": 1,
                "model_path": data / "runs", **extra}
    out = ["-m", "pix2tex.train", "--config", str(DEBUG), "--no-progress"]
    for key, value in settings.items():
        out += ["--set", f"{key}={value}"]
    return out


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port())]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_with_half_batches_make_the_step_of_one_with_the_whole_batch(data):
    one = subprocess.run([sys.executable, *_args(data, "one", 2)], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=1800)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([*_torchrun(2), *_args(data, "two", 2)], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(data / "runs" / "one" / "last" / "model.safetensors"))
    b = load_file(str(data / "runs" / "two" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4  # the same two optimizer steps, up to the order of float reductions
    # Only rank 0 wrote: one line per logged step, one "done" line.
    steps = [m["step"] for m in _metrics(data / "runs" / "two")]
    assert steps == [1, 2]
    assert two.stdout.count("done: step 2") == 1
    assert _metrics(data / "runs" / "one")[0]["loss"] == pytest.approx(_metrics(data / "runs" / "two")[0]["loss"],
                                                                        rel=1e-5)


def test_two_ranks_killed_and_resumed_continue_exactly(data):
    name = f"resume{os.getpid()}"  # unique: every process of this run has it in its command line
    args = _args(data, name, 12, sample_freq=4)
    proc = subprocess.Popen([*_torchrun(2), *args], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run = data / "runs" / name
    deadline = time.time() + 1800
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").exists() and (run / "metrics.jsonl").exists():
            steps = [m["step"] for m in _metrics(run) if "loss" in m]
            if steps and steps[-1] >= 5:
                # kill -9 of torchrun and both ranks at once (the ranks are not in torchrun's
                # process group, and a SIGTERM would let them stop cleanly, which is not the test).
                subprocess.run(["pkill", "-9", "-f", f"name={name} "], check=False)
                subprocess.run(["pkill", "-9", "-f", f"name={name}$"], check=False)
                proc.wait()
                killed_at = steps[-1]
                break
        time.sleep(0.1)
    assert killed_at is not None, "training did not reach its first checkpoint"
    before = {m["step"]: m for m in _metrics(run)}
    resumed = subprocess.run([*_torchrun(2), *args, "--resume"], cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _metrics(run)[len(before):]
    first = after[0]
    assert first["step"] in before and first["step"] <= killed_at + 1
    # The same learning rate and the same loss as the killed run at that step: same weights, same batch.
    assert first["lr"] == pytest.approx(before[first["step"]]["lr"], rel=1e-9)
    assert first["loss"] == pytest.approx(before[first["step"]]["loss"], rel=1e-4)
    assert after[-1]["step"] == 12


def test_a_batch_that_does_not_split_evenly_is_a_one_line_error(data):
    result = subprocess.run([*_torchrun(2), *_args(data, "odd", 1, batchsize=7)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "error: batchsize (7) must be a multiple of the number of processes (2)" in result.stderr


def test_sigterm_stops_both_ranks_together_with_the_state_saved_once(data):
    from pix2tex.checkpoint import load_resume_state

    name = f"term{os.getpid()}"
    proc = subprocess.Popen([*_torchrun(2), *_args(data, name, 1000)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = data / "runs" / name
    deadline = time.time() + 1800
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(_metrics(run)) >= 3):
        time.sleep(0.1)
    proc.terminate()  # torchrun passes SIGTERM on to both ranks
    out, err = proc.communicate(timeout=120)
    state = load_resume_state(run / "last.pt")
    logged = [m["step"] for m in _metrics(run)]
    assert state["step"] == logged[-1] and logged == sorted(set(logged))  # rank 0 alone wrote, once per step
    assert (out + err).count("interrupted at step") == 1
