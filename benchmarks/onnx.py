"""PyTorch vs ONNX Runtime on the CPU: export time and greedy decoding latency.

The model is ``--checkpoint MODEL`` if given, else the bundled model if this installation has one,
else the seed-sized hybrid of :mod:`benchmarks.models` with random weights.  It is exported with
``pix2tex.export`` into a temporary folder, then both engines decode the same random image:
encoder + exactly N greedy tokens from BOS with the key/value cache, EOS disabled.  Each
measurement is 1 warm-up run and the median (and minimum) of ``--repeats`` timed runs, one JSON
line per engine and shape:

    {"impl": "pix2tex-vit-onnx", "task": "generate", "shape": "B1x64x320/N64", "median_s": ..., "min_s": ...,
     "tokens_per_s": ...}

(``impl`` "pix2tex-vit" is PyTorch), plus one ``{"task": "export", "seconds": ...}`` line.

    python -m benchmarks.onnx [--checkpoint MODEL] [--threads 2] [--tokens 64] [--batches 1,8] [--repeats 5] --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.models import record, seed_config, time_runs
from pix2tex.checkpoint import default_model_folder, load_model_folder, save_model_folder
from pix2tex.demo import demo_formulas
from pix2tex.export import export_model
from pix2tex.models import get_model
from pix2tex.normalize import normalize
from pix2tex.onnx_engine import load_onnx_folder
from pix2tex.tokenizer import LatexTokenizer

HEIGHT, WIDTH = 64, 320


def random_model_folder(folder: Path) -> Path:
    """The seed-sized hybrid with random weights (seed 0), saved as a model folder."""
    torch.manual_seed(0)
    cfg = seed_config()
    tokenizer = LatexTokenizer.train([normalize(f) for f in demo_formulas()], cfg.num_tokens)
    save_model_folder(folder, get_model(cfg).eval(), cfg, tokenizer)
    return folder


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) <= 0:
        raise ValueError(f"--batches must be comma-separated positive integers, got {text!r}")
    return batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--checkpoint", help="model folder (default: bundled model, else random seed-sized hybrid)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both engines")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens to generate")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes, e.g. 1,8")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    try:
        batches = parse_batches(args.batches)
        if args.threads <= 0 or args.tokens <= 0 or args.repeats <= 0:
            raise ValueError("--threads, --tokens and --repeats must be positive")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pix2tex-onnx-bench-") as tmp:
        source = Path(args.checkpoint) if args.checkpoint else default_model_folder()
        if not args.checkpoint and not (source / "model.safetensors").is_file():
            source = random_model_folder(Path(tmp) / "model")
        model = load_model_folder(source)[0]
        start = time.perf_counter()
        out = export_model(model, source, Path(tmp) / "onnx")
        seconds = round(time.perf_counter() - start, 3)
        print(json.dumps({"impl": "pix2tex-vit-onnx", "task": "export", "seconds": seconds}), flush=True)
        onnx_model = load_onnx_folder(out, threads=args.threads)[0]
        if not args.json:
            print(f"model: {source}, {args.threads} threads", file=sys.stderr)
        for batch in batches:
            images = torch.randn(batch, 1, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(batch))
            shape = f"B{batch}x{HEIGHT}x{WIDTH}/N{args.tokens}"
            # PyTorch takes the tensor, onnxruntime the same numbers as a numpy array.
            for impl, engine, x in (("pix2tex-vit", model, images), ("pix2tex-vit-onnx", onnx_model, images.numpy())):
                def run(engine=engine, x=x) -> object:
                    return engine.generate(x, max_new_tokens=args.tokens, stop_at_eos=False)
                row = record(impl, "generate", shape, time_runs(run, warmup=1, repeats=args.repeats),
                             "tokens_per_s", batch * args.tokens)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
