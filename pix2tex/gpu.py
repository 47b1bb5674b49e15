"""Train on a lent GPU for a few minutes: prepare here, train there, bring the weights back.

A lent GPU machine (see the README, "Training on a lent GPU") is bare, has no TeX, takes at most
64 MiB of working tree per command, runs a command for at most 10 minutes and returns files of at
most 16 MiB.  So a GPU stage is three steps:

    python -m pix2tex.gpu prepare --start MODEL_FOLDER --data DATA_DIR [--max-mb 16]   # here: fills .gpu/
    # device run, carry [".gpu"]: the command `prepare` prints (installs .gpu/whl, then:)
    python3 -m pix2tex.gpu train --minutes 8.5 --out $OUT                              # there
    python -m pix2tex.gpu fetch FILES_AT --to MODEL_FOLDER                                  # here again

Each step imports what it needs inside its function: ``train`` runs on a bare machine that has
torch only once the wheels of ``prepare`` are installed, and ``--help`` answers without them.

``prepare`` packs a random sample of the training renders and the im2latex validation renders into
``.gpu/pack.tar`` (:mod:`pix2tex.pack`), copies the start weights as fp16 (``.gpu/start``) and
downloads the wheels the GPU machine lacks (``.gpu/whl``).  ``train`` trains from those weights
with the recipe's settings, a large batch and bf16 until ``--minutes`` have passed (then it stops
as on SIGTERM: state saved), and writes the last weights as an fp16 model folder under ``--out``
(every file well under 16 MiB).  ``fetch`` checks and copies that folder back; the next ``prepare
--start`` that folder continues from it on the GPU, and a CPU run continues from it with
``--set load_chkpt=MODEL_FOLDER``.  Without a GPU ``train`` runs on the CPU (that is how it is tested).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

GPU_DIR = Path(".gpu")
RECIPE = Path(__file__).resolve().parent / "model" / "settings" / "recipe.yaml"
# Packages the GPU machine's image lacks (it has torch, numpy, scipy, opencv, yaml, tokenizers,
# safetensors, sacrebleu, einops, sympy); downloaded for its Python 3.12 without their dependencies.
WHEELS = ["x-transformers", "einx", "frozendict", "loguru", "torch-einops-utils", "albumentations", "albucore",
          "simsimd", "stringzilla", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
          "rapidfuzz", "timm"]
# The settings a GPU stage changes on top of recipe.yaml: a large batch, a short warm-up, a rate
# scaled for the batch, and workers to keep the GPU fed.
GPU_SETTINGS = {"batchsize": 256, "testbatchsize": 128, "max_lr": 3e-3, "warmup_steps": 100, "max_steps": 4000,
                "min_lr": 1e-4, "num_workers": 8, "sample_freq": 500, "valbatches": 2, "augment_level": "light"}

__all__ = ["prepare", "train", "fetch", "main"]


def prepare(start: Path, data: Path, out: Path = GPU_DIR, *, max_mb: float = 16.0, wheels: bool = True,
            seed: int = 0) -> dict:
    """Fill ``out`` (pack, fp16 start weights, wheels) for :func:`train` on the GPU machine."""
    import torch

    from pix2tex.checkpoint import load_model_folder, save_model_folder
    from pix2tex.pack import pack

    out.mkdir(parents=True, exist_ok=True)
    model, config, tokenizer, meta = load_model_folder(start)
    save_model_folder(out / "start", model, config, tokenizer, meta, dtype=torch.float16)  # replaces it
    tok = out / "start" / "tokenizer.json"
    valdata = data / "valid_im2latex_val.pkl"
    info = pack(data / "train.pkl", tok, out / "pack.tar", valdata=valdata if valdata.exists() else None,
                max_mb=max_mb, seed=seed)
    if wheels:
        whl = out / "whl"
        shutil.rmtree(whl, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "--platform", "any", "-d", str(whl), *pinned_wheels()], check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {**info, "folder_bytes": size}


def pinned_wheels() -> list[str]:
    """WHEELS at the versions installed here (the versions the tests ran with), where installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in WHEELS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def device_command(minutes: float = 8.5) -> str:
    """The command for the device tool's ``run`` (with ``carry: [".gpu"]``)."""
    return ("set -e; python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl; "
            f"export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; python3 -m pix2tex.gpu train --minutes {minutes} "
            "--out $OUT 2>&1 | tail -n 60")


def train(gpu_dir: Path, out: Path, minutes: float, work: Path | None = None,
          overrides: dict | None = None) -> Path:
    """Train from ``gpu_dir/start`` on ``gpu_dir/pack.tar`` for ``minutes``; the fp16 weights go to ``out/weights``."""
    import tempfile

    import torch

    from pix2tex.checkpoint import load_model_folder, save_model_folder
    from pix2tex.config import load_config
    from pix2tex.pack import unpack
    from pix2tex.train import train as run_training

    work = Path(work or tempfile.mkdtemp(prefix="pix2tex-gpu-"))
    pack_dir = unpack(gpu_dir / "pack.tar", work / "pack")
    start_config = (gpu_dir / "start" / "config.yaml").read_text(encoding="utf-8")
    import yaml

    model_settings = yaml.safe_load(start_config)  # the start weights fix the architecture
    settings = {
        **model_settings, **GPU_SETTINGS,
        "data": str(pack_dir / "train.pkl"), "tokenizer": str(pack_dir / "tokenizer.json"),
        "valdata": str(pack_dir / "valid.pkl") if (pack_dir / "valid.pkl").exists() else None, "testdata": None,
        "load_chkpt": str(gpu_dir / "start"), "model_path": str(work / "runs"), "name": "gpu",
        **(overrides or {}),
    }
    config = load_config(RECIPE, settings)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The time limit stops the run as SIGTERM would: the loop saves its state and the last weights.
    timer = threading.Timer(minutes * 60, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        run_training(config, device=device, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    model, model_config, tokenizer, meta = load_model_folder(work / "runs" / "gpu" / "last")
    target = out / "weights"
    save_model_folder(target, model, model_config, tokenizer, {**meta, "gpu": device.type}, dtype=torch.float16)
    shutil.copy(work / "runs" / "gpu" / "metrics.jsonl", out / "metrics.jsonl")
    return target


def fetch(source: Path, target: Path) -> Path:
    """Copy the weights a GPU stage brought back into ``target`` (checked by loading them first)."""
    from pix2tex.checkpoint import load_model_folder, save_model_folder

    folder = source / "weights" if (source / "weights").is_dir() else source
    model, config, tokenizer, meta = load_model_folder(folder)
    save_model_folder(target, model, config, tokenizer, meta)
    if (source / "metrics.jsonl").exists():
        shutil.copy(source / "metrics.jsonl", target / "gpu_metrics.jsonl")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.gpu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: pack data, start weights and wheels into .gpu/")
    p.add_argument("--start", type=Path, required=True, help="model folder to continue from")
    p.add_argument("--data", type=Path, required=True, help="create_data.sh output folder")
    p.add_argument("--max-mb", type=float, default=16.0, help="size budget of the packed training images")
    p.add_argument("--no-wheels", action="store_true", help="skip downloading wheels (tests)")
    t = sub.add_parser("train", help="there: train for --minutes, weights to --out")
    t.add_argument("--minutes", type=float, default=8.5)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--gpu-dir", type=Path, default=GPU_DIR)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    f = sub.add_parser("fetch", help="here: copy the weights a GPU stage brought back")
    f.add_argument("source", type=Path, help="the folder the device tool put $OUT's files in")
    f.add_argument("--to", type=Path, required=True, help="model folder to write")
    args = parser.parse_args(argv)
    from pix2tex.checkpoint import CheckpointError
    from pix2tex.config import ConfigError
    from pix2tex.dataset.dataset import DatasetError

    try:
        if args.command == "prepare":
            info = prepare(args.start, args.data, max_mb=args.max_mb, wheels=not args.no_wheels)
            print(json.dumps(info))
            print(f"device run: carry [\".gpu\"], command:\n{device_command()}")
        elif args.command == "train":
            from pix2tex.train import _parse_overrides

            target = train(args.gpu_dir, args.out, args.minutes, overrides=_parse_overrides(args.overrides))
            print(f"weights: {target}")
        else:
            print(f"weights: {fetch(args.source, args.to)}")
    except (CheckpointError, ConfigError, DatasetError, OSError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
