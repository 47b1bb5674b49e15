"""The ``pix2tex`` command: ``pix2tex predict|train|eval|render|dataset|serve …``.

``predict`` is implemented here; the other verbs hand their arguments to the modules that the
seed runs with ``python -m`` (``pix2tex train --config X`` == ``python -m pix2tex.train --config X``).
Everything that imports torch, numpy or OpenCV is imported inside the functions that need it, so
that ``pix2tex --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pix2tex.fileio import printable_name

__all__ = ["main", "predict_main", "expand_inputs", "read_stdin"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(sources, problems): folders expanded to their images (sorted) and glob patterns to their
    matches; other paths and ``-`` (stdin) kept as given, for the reader to report if they are
    unreadable.  A folder with no image is a problem (one line naming it), not a silent success."""
    sources: list[str] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if item != "-" and path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                problems.append(f"{item}: no images in this folder (looked for {', '.join(IMAGE_SUFFIXES)})")
            sources += found
        elif item != "-" and not path.exists() and any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            sources += matches if matches else [item]  # no match: reported as a missing file
        else:
            sources.append(item)
    return sources, problems


def read_stdin(limit: int) -> bytes | str:
    """Standard input's bytes, or the one-line reason it was refused.  At most ``limit`` + 1 bytes
    are read, so an endless stream (``< /dev/zero``) is refused without filling memory."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        return f"<stdin>: more than {limit:,} bytes, over the {limit:,}-byte limit for an image"
    return data


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pix2tex predict", description="Print the LaTeX of formula images.")
    parser.add_argument("images", nargs="+", help="image files, folders, glob patterns, or - for stdin")
    parser.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--batch-size", type=int, default=8, help="images decoded together")
    parser.add_argument("--encoder-batch", type=int,
                        help="images encoded at once: memory against speed (default: 2 on CPU, else the batch)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: the LaTeX (path<TAB>LaTeX for several images); json: one object per image "
                             "with 'confidence' (the mean log-probability of the chosen tokens: 0 is certain, "
                             "-1 means e^-1 = 0.37 per token on average) and 'seconds' (the image's preparation "
                             "plus an even share of its batch's decoding time)")
    parser.add_argument("--no-rescale", action="store_true", help="do not normalize the glyph size")
    parser.add_argument("--scales", type=int, default=1, metavar="N",
                        help="read each image at N glyph sizes and keep the reading they agree on most "
                             "(more accurate, N times the work; 6 is what docs/RESULTS.md measures)")
    parser.add_argument("--glyph-scale", type=float, metavar="F",
                        help="read glyphs at F times the training size (default: the model's glyph_scale)")
    parser.add_argument("--glyph-estimator", metavar="NAME",
                        help="how glyphs are measured: soft or stroke (default: the model's; see "
                             "pix2tex.preprocess.GLYPH_ESTIMATORS)")
    parser.add_argument("--device", help="cpu, cuda, … (default: CUDA when available)")
    parser.add_argument("--engine", choices=("auto", "onnx", "torch"), default="auto",
                        help="auto: onnxruntime when the model folder has ONNX graphs (the bundled one does; "
                             "`pix2tex export --onnx DIR` writes them), else PyTorch")
    parser.add_argument("--threads", type=int, help="CPU threads of the onnx engine")
    return parser


def _read_stdin_inputs(sources: list[str]) -> tuple[list[str | bytes], dict[int, str]]:
    """The inputs to read (paths, and the bytes of ``-``) and, by index, those refused (why)."""
    from pix2tex.preprocess import MAX_FILE_BYTES

    inputs: list[str | bytes] = list(sources)
    refused: dict[int, str] = {}
    for k in (k for k, s in enumerate(sources) if s == "-"):
        data = read_stdin(MAX_FILE_BYTES)
        if isinstance(data, str):
            refused[k] = data
        else:
            inputs[k] = data
    return inputs, refused


def _print_reading(name: str, result, fmt: str, alone: bool) -> None:
    if fmt == "json":
        print(json.dumps({"path": name, "latex": result.latex, "confidence": round(result.confidence, 4),
                          "seconds": round(result.seconds, 4)}))
    elif alone:
        print(result.latex)
    else:
        print(f"{printable_name(name)}\t{result.latex}")  # a tab or newline in a name must not forge a line


def predict_main(argv: Sequence[str]) -> int:
    parser = _predict_parser()
    args = parser.parse_args(argv)
    if args.beam < 1 or args.batch_size < 1 or (args.encoder_batch is not None and args.encoder_batch < 1):
        parser.error("--beam, --batch-size and --encoder-batch must be at least 1")
    if args.no_rescale and (args.glyph_scale is not None or args.glyph_estimator is not None):
        parser.error("--glyph-scale and --glyph-estimator need rescaling (--no-rescale reads images at their own size)")
    # oneDNN keeps the compiled kernels of every convolution input shape it has seen (1024 by
    # default): files of many sizes would hold close to a gigabyte of them (docs/RESULTS.md).  A
    # small cache costs no speed.  Read when the first kernel is made, so set before torch works.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

    from tqdm.auto import tqdm

    from pix2tex.inference import LatexOCR

    sources, problems = expand_inputs(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not sources:
        return 1
    names = ["<stdin>" if s == "-" else s for s in sources]
    inputs, refused = _read_stdin_inputs(sources)
    try:
        ocr = LatexOCR(args.checkpoint, device=args.device, beam=args.beam, batch_size=args.batch_size,
                       rescale=not args.no_rescale, engine=args.engine, threads=args.threads,
                       encoder_batch=args.encoder_batch, glyph_scale=args.glyph_scale, scales=args.scales,
                       glyph_estimator=args.glyph_estimator)
    except (ValueError, ImportError) as exc:  # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    readable = [k for k in range(len(inputs)) if k not in refused]
    with tqdm(total=len(readable), disable=len(readable) <= 3 or not sys.stderr.isatty(), desc="predict") as bar:
        read = ocr.predict([inputs[k] for k in readable], names=[names[k] for k in readable], progress=bar)
    results = dict(zip(readable, read, strict=True))
    failed = len(problems)
    for k, name in enumerate(names):
        error = refused[k] if k in refused else results[k].error
        if error is None:
            _print_reading(name, results[k], args.format, alone=len(sources) == 1)
            continue
        failed += 1
        print(f"error: {error}", file=sys.stderr)
        if args.format == "json":
            print(json.dumps({"path": name, "latex": None, "error": error}))
    return 1 if failed else 0


# Top-level modules of the `train` extra (pyproject.toml): what training, export and evaluation import.
TRAIN_MODULES = frozenset({"torch", "torchvision", "timm", "x_transformers", "albumentations", "safetensors",
                           "sacrebleu", "onnx"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = {
        "predict": None,
        "train": "pix2tex.train",
        "eval": "pix2tex.eval",
        "render": "pix2tex.render.renderer",
        "dataset": "pix2tex.dataset.dataset",
        "split": "pix2tex.dataset.split",
        "export": "pix2tex.export",
        "serve": "pix2tex.serve",
    }
    what = {
        "predict": "read formula images, print their LaTeX (pix2tex predict --help)",
        "train": "train a model from a YAML config (python -m pix2tex.train)",
        "eval": "score a model on a dataset or a folder of labelled images",
        "render": "render formulas to training images with TeX (sandboxed)",
        "dataset": "train a tokenizer or build a dataset .pkl",
        "split": "split rendered labels into train/valid/test",
        "export": "export a model folder to ONNX",
        "serve": "HTTP API and web page (paste a screenshot) on 127.0.0.1:8502",
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in verbs:
        usage = "usage: pix2tex COMMAND …\n\ncommands:\n" + "".join(
            f"  {verb:<8} {what[verb]}\n" for verb in verbs) + "\nexample: pix2tex predict formula.png"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}\n{usage}", file=sys.stderr)
            return 2
        print(usage)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb == "predict":
        return predict_main(rest)
    import importlib

    try:
        module = importlib.import_module(verbs[verb])
    except ImportError as exc:  # an optional extra is missing
        if exc.name in TRAIN_MODULES:  # the light install: reading only
            print(f"error: pix2tex {verb} needs {exc.name}, which the light install leaves out: "
                  f"pip install 'pix2tex[train]'", file=sys.stderr)
        else:  # the module's own message names its extra (pix2tex serve: fastapi)
            print(f"error: {exc}", file=sys.stderr)
        return 2
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
