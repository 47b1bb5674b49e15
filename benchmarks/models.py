"""Speed of the network itself (random weights, fp32, CPU): encoding, generation and a training step.

The model is the seed-sized hybrid: ResNetV2 [2, 3, 7] + ViT (dim 256, 4 blocks, 8 heads) and a
4-layer decoder over a vocabulary of 8000, max image 192 x 672.  Every measurement is 1 warm-up
run and the median (and minimum) of 5 timed runs, printed as one JSON line:

    {"impl": "pix2tex-vit", "task": "generate", "shape": "B1x64x320/N32", "median_s": ..., "min_s": ...,
     "tokens_per_s": ...}

* ``encode``   ``B{1,8}x{64x320,128x512}``: encoder forward without gradients (``samples_per_s``);
* ``generate`` ``B{1,8}x{64x320,128x512}/N{32,128}``: encoder + exactly N greedy tokens from BOS,
  EOS disabled (``tokens_per_s`` = B * N / time); ``--no-cache`` re-runs the whole prefix each
  step instead of using the key/value cache and reports impl ``pix2tex-vit-nocache``;
* ``train``    ``B32x64x320/T48``: zero_grad, forward on 48-token targets, backward,
  clip_grad_norm_(1.0), AdamW step (``samples_per_s``).

    python -m benchmarks.models [--tasks encode,generate,train] [--threads 2] [--quick] [--no-cache] --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

from pix2tex.config import ModelConfig
from pix2tex.models import Model, get_model, model_summary
from pix2tex.tokenizer import BOS_ID, EOS_ID

TASKS = ("encode", "generate", "train")
IMAGE_SIZES = ((64, 320), (128, 512))


def seed_config() -> ModelConfig:
    """The seed's hybrid model (these are also ModelConfig's defaults, spelled out so they cannot drift)."""
    return ModelConfig(encoder_structure="hybrid", backbone_layers=[2, 3, 7], channels=1, dim=256, encoder_depth=4,
                       heads=8, num_layers=4, num_tokens=8000, patch_size=16, max_height=192, max_width=672,
                       max_seq_len=512)


def time_runs(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def record(impl: str, task: str, shape: str, times: list[float], rate_name: str, items: int) -> dict:
    median = statistics.median(times)
    return {"impl": impl, "task": task, "shape": shape, "median_s": round(median, 5), "min_s": round(min(times), 5),
            rate_name: round(items / median, 2)}


def encode_cases(model: Model, quick: bool) -> Iterator[tuple[str, Callable[[], object], str, int]]:
    for height, width in IMAGE_SIZES[:1] if quick else IMAGE_SIZES:
        for batch in (1,) if quick else (1, 8):
            images = torch.randn(batch, 1, height, width)

            def run(images: torch.Tensor = images) -> object:
                with torch.no_grad():
                    return model.encode(images)
            yield f"B{batch}x{height}x{width}", run, "samples_per_s", batch


def generate_cases(model: Model, quick: bool, use_cache: bool) -> Iterator[tuple[str, Callable[[], object], str, int]]:
    for batch in (1,) if quick else (1, 8):
        for height, width in IMAGE_SIZES[:1] if quick else IMAGE_SIZES:
            for tokens in (32,) if quick else (32, 128):
                images = torch.randn(batch, 1, height, width)

                def run(images: torch.Tensor = images, tokens: int = tokens) -> object:
                    return model.generate(images, max_new_tokens=tokens, stop_at_eos=False, use_cache=use_cache)
                yield f"B{batch}x{height}x{width}/N{tokens}", run, "tokens_per_s", batch * tokens


def train_cases(model: Model, quick: bool) -> Iterator[tuple[str, Callable[[], object], str, int]]:
    batch, height, width, length = (4 if quick else 32), 64, 320, 48
    images = torch.randn(batch, 1, height, width)
    targets = torch.randint(4, model.cfg.num_tokens, (batch, length))
    targets[:, 0], targets[:, -1] = BOS_ID, EOS_ID
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = model(images, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss
    yield f"B{batch}x{height}x{width}/T{length}", run, "samples_per_s", batch


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks must list some of {','.join(TASKS)}, got {text!r}")
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: encode,generate,train")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="one shape per task, 1 warm-up + 2 runs (smoke test)")
    parser.add_argument("--no-cache", action="store_true", help="generate without the key/value cache")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
        if args.threads <= 0:
            raise ValueError(f"--threads must be positive, got {args.threads}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model(seed_config())
    if not args.json:
        print(model_summary(model), file=sys.stderr)
    repeats = 2 if args.quick else 5
    impl = "pix2tex-vit-nocache" if args.no_cache else "pix2tex-vit"
    for task in tasks:
        if task == "train":
            model.train()
            cases = train_cases(model, args.quick)
        else:
            model.eval()
            cases = encode_cases(model, args.quick) if task == "encode" else generate_cases(
                model, args.quick, use_cache=not args.no_cache)
        for shape, run, rate_name, items in cases:
            row = record(impl, task, shape, time_runs(run, warmup=1, repeats=repeats), rate_name, items)
            print(json.dumps(row) if args.json else
                  f"{task:9s} {shape:22s} median {row['median_s']:.4f}s  min {row['min_s']:.4f}s  "
                  f"{row[rate_name]:.1f} {rate_name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
