"""Key/value-cached decoding against re-running the whole prefix every step, same weights, one run.

The uncached decoder is what the public pix2tex does: each new token runs the full token prefix
through the decoder again, including the cross-attention projections of the image memory.  The
cached decoders run only the newest token and reuse the keys/values of the prefix and of the
memory: ``pix2tex-vit`` is the project's lean step (LeanStep in pix2tex/models/steps.py, the default),
``pix2tex-vit-xtcache`` x-transformers' own cached step.  All decode exactly ``--tokens`` greedy
tokens (EOS disabled) from the same encoder memory of random images on the seed-sized model with
random weights; the encoder is run once, outside the timing.  Prints one JSON line per decoder and
one per speed-up of the default over the others (and whether they produced the same ids):

    python -m benchmarks.inference --tokens 128 --batch 1 --json
    python -m benchmarks.inference --tokens 128 --batch 8 --json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks.models import record, seed_config, time_runs
from pix2tex.models import get_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens to decode (EOS disabled)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after 1 warm-up")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    cfg = seed_config()
    problems = [f"--{name} must be positive, got {getattr(args, name)}"
                for name in ("tokens", "batch", "height", "width", "threads", "repeats") if getattr(args, name) <= 0]
    if args.tokens > cfg.max_seq_len - 1:
        problems.append(f"--tokens must be at most {cfg.max_seq_len - 1}, got {args.tokens}")
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = get_model(cfg).eval()
    try:
        with torch.no_grad():
            memory = model.encode(torch.randn(args.batch, cfg.channels, args.height, args.width))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    shape = f"B{args.batch}x{args.height}x{args.width}/N{args.tokens}"
    rows, outputs = {}, {}
    variants = (("pix2tex-vit", True, True), ("pix2tex-vit-xtcache", True, False),
                ("pix2tex-vit-nocache", False, False))
    for impl, use_cache, fast in variants:
        def run(use_cache: bool = use_cache, fast: bool = fast, impl: str = impl) -> None:
            outputs[impl] = model.decoder.generate(memory, max_new_tokens=args.tokens, stop_at_eos=False,
                                                   use_cache=use_cache, fast=fast).ids
        times = time_runs(run, warmup=1, repeats=args.repeats)
        rows[impl] = record(impl, "decode", shape, times, "tokens_per_s", args.batch * args.tokens)
        print(json.dumps(rows[impl]) if args.json else
              f"{impl:20s} {shape}: median {rows[impl]['median_s']:.3f}s  {rows[impl]['tokens_per_s']:.1f} tokens/s",
              flush=True)
    for baseline in ("pix2tex-vit-nocache", "pix2tex-vit-xtcache"):
        speedup = rows[baseline]["median_s"] / rows["pix2tex-vit"]["median_s"]
        same = bool(torch.equal(outputs["pix2tex-vit"], outputs[baseline]))
        summary = {"impl": "pix2tex-vit", "task": "decode-speedup", "shape": shape, "baseline": baseline,
                   "speedup": round(speedup, 2), "same_ids": same, "threads": args.threads}
        print(json.dumps(summary) if args.json else f"speed-up over {baseline}: {speedup:.2f}x (same ids: {same})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
