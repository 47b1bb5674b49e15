"""Evaluation: ``python -m pix2tex.eval [--checkpoint MODEL] (--data TEST.pkl | --images DIR --labels labels.tsv)``.

Prints BLEU-4 (on normalized tokens), normalized edit distance, token accuracy and exact match,
and writes every prediction next to its reference (``--out``, a TSV: image, prediction, reference).

* ``--data``: a dataset built by ``pix2tex.dataset.dataset`` (the project's own renders); images are
  fed exactly as during validation.
* ``--images``/``--labels``: a folder of real images with ``path<TAB>latex`` labels (e.g.
  ../shared/data/images/im2latex_sample); images go through the same preprocessing as
  ``pix2tex predict``.
* ``--render``: both prediction and reference are rendered (same renderer, font and dpi) and
  compared as images (:mod:`pix2tex.image_metrics`): exact match with and without whitespace
  columns, column edit distance, the share of predictions that do not compile (TeX's reason per
  sample in the TSV), and everything broken down by reference length, corpus and matrix/array.
* ``--report DIR``: the same, plus ``DIR/index.html`` (self-contained: summary, breakdowns, a plot
  of edit distance against length, the worst cases with input, rendered prediction and reference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pix2tex.checkpoint import CheckpointError, load_model_folder
from pix2tex.checkpoint import glyph_estimator as folder_glyph_estimator
from pix2tex.checkpoint import glyph_scale as folder_glyph_scale
from pix2tex.dataset.dataset import DatasetError, Im2LatexDataset, read_labels
from pix2tex.fileio import atomic_write_text
from pix2tex.inference import LatexOCR
from pix2tex.metrics import Scores, score
from pix2tex.models.model import Model
from pix2tex.normalize import normalize
from pix2tex.preprocess import GLYPH_ESTIMATORS
from pix2tex.tokenizer import LatexTokenizer

__all__ = ["evaluate_dataset", "evaluate_folder", "read_dataset", "main"]


def evaluate_dataset(checkpoint: str | None, data: str, *, beam: int = 1, batch_size: int = 16,
                     limit: int | None = None, device: str = "cpu",
                     progress: bool = True) -> tuple[Scores, list[tuple[str, str, str]]]:
    """Score a model folder on a .pkl dataset; returns scores and (image, prediction, reference) rows."""
    model, config, tokenizer, meta = load_model_folder(checkpoint, device)
    ds = Im2LatexDataset.load(data)
    reads_with = folder_glyph_estimator(meta)
    if ds.glyph_estimator != reads_with:  # as training refuses such validation data
        raise DatasetError(f"{data} measures glyphs with {ds.glyph_estimator!r}, the model reads with "
                           f"{reads_with!r}: it would read at other sizes than it was trained at "
                           f"(python -m pix2tex.dataset.dataset --remeasure {data} --glyph-estimator {reads_with} "
                           f"-o OUT.pkl)")
    ds.set_tokenizer(tokenizer)
    # At the glyph size the model reads at (its folder's glyph_scale; training's for its own folders).
    ds.update(batchsize=batch_size, shuffle=False, test=True, keep_smaller_batches=True,
              max_seq_len=config.max_seq_len, max_dimensions=(config.max_width, config.max_height),
              patch_size=config.patch_size, glyph_scale=folder_glyph_scale(meta))
    batches = all_batches = ds.batches(0)
    if limit is not None:
        kept, budget = [], limit
        for b in batches:
            if budget <= 0:
                break
            kept.append(b[:budget])
            budget -= len(kept[-1])
        batches = kept
    rows: list[tuple[str, str, str]] = []
    for indices, predictions, references in read_dataset(model, tokenizer, ds, tqdm(batches, disable=not progress,
                                                                                    desc="eval"), device, beam=beam):
        rows += [(str(ds.image_path(i)), p, r) for i, p, r in zip(indices, predictions, references, strict=True)]
    left_out = len(ds) - sum(len(b) for b in all_batches)
    if left_out and limit is None:
        print(f"note: {left_out} samples exceed the model's size or length limits and were not scored",
              file=sys.stderr)
    return score([r[1] for r in rows], [r[2] for r in rows]), rows


def read_dataset(model: Model, tokenizer: LatexTokenizer, dataset: Im2LatexDataset, batches: Iterable[list[int]],
                 device: str | torch.device, *, beam: int = 1,
                 bound_by_labels: bool = False) -> Iterator[tuple[list[int], list[str], list[str]]]:
    """(indices, predicted LaTeX, reference LaTeX) for each batch of a dataset, decoded without gradients.

    Images are fed exactly as in training (one padded batch, padding masked).  ``bound_by_labels``
    stops decoding at 1.5x the batch's longest reference plus 8 tokens (validation: a cheap bound
    that does not change the scores of outputs that end in time).
    """
    for indices in batches:
        batch = dataset.prepare_data(indices)
        limit = model.cfg.max_seq_len - 1
        if bound_by_labels:
            limit = min(limit, int(batch.ids.shape[1] * 1.5) + 8)
        x = batch.images.to(device)
        # no_grad, not inference_mode: training validates with this and goes on training after;
        # and only around the model call, never across a yield.
        with torch.no_grad():
            out = (model.beam_search(x, beam_size=beam, sizes=batch.sizes, max_new_tokens=limit) if beam > 1
                   else model.generate(x, sizes=batch.sizes, max_new_tokens=limit))
        yield list(indices), tokenizer.decode_latex(out.ids.cpu()), list(batch.labels)


def evaluate_folder(checkpoint: str | None, images: str, labels: str, *, beam: int = 1, batch_size: int = 16,
                    limit: int | None = None, device: str | None = None, glyph_scale: float | None = None,
                    scales: int = 1, glyph_estimator: str | None = None,
                    progress: bool = True) -> tuple[Scores, list[tuple[str, str, str]]]:
    """Score a model folder on real images listed in a ``path<TAB>latex`` file (read as
    :class:`LatexOCR` reads them; ``glyph_scale``, ``scales``, ``glyph_estimator``: see there)."""
    pairs = read_labels(labels)
    if any(image is None for image, _ in pairs):
        raise DatasetError(f"{labels}: expected 'path<TAB>latex' lines")
    pairs = pairs[:limit] if limit is not None else pairs
    root = Path(images)
    if not root.is_dir():
        raise DatasetError(f"{images}: image folder not found")
    # labels.tsv paths may include the folder's own name (im2latex_sample: images/x.png).
    paths = [str(root / p) if (root / p).exists() else str(root.parent / p) for p, _ in pairs]
    # PyTorch reads: its scores are the reference every model was compared on (the ONNX engine's
    # readings are checked against them, docs/RESULTS.md).
    ocr = LatexOCR(checkpoint, device=device, beam=beam, batch_size=batch_size, glyph_scale=glyph_scale,
                   scales=scales, glyph_estimator=glyph_estimator, engine="torch")
    with tqdm(total=len(paths), disable=not progress, desc="eval") as bar:
        predictions = ocr.predict(paths, progress=bar)
    rows = []
    for pred, (_, ref) in zip(predictions, pairs, strict=True):
        if pred.error is not None:
            print(f"warning: {pred.error}", file=sys.stderr)
        rows.append((pred.source, pred.latex or "", normalize(ref)))
    return score([r[1] for r in rows], [r[2] for r in rows]), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.eval", description="Evaluate a pix2tex model.")
    parser.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    parser.add_argument("--data", help="test dataset .pkl")
    parser.add_argument("--images", help="folder of real images (with --labels)")
    parser.add_argument("--labels", help="path<TAB>latex file for --images")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, help="score only the first N samples")
    parser.add_argument("--glyph-scale", type=float, metavar="F",
                        help="with --images: read glyphs at F times the training size (default: the model's)")
    parser.add_argument("--scales", type=int, default=1, metavar="N",
                        help="with --images: read each image at N glyph sizes, keep the consensus (LatexOCR)")
    parser.add_argument("--glyph-estimator", choices=GLYPH_ESTIMATORS,
                        help="with --images: how glyphs are measured (default: the model's)")
    parser.add_argument("--out", help="predictions TSV (default: predictions.tsv in the working directory)")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON line")
    parser.add_argument("--no_cuda", "--no-cuda", action="store_true")
    parser.add_argument("--render", action="store_true",
                        help="also render predictions and references: rendered exact match (with and without "
                             "whitespace), rendered edit distance, share not compiling; breakdowns")
    parser.add_argument("--report", metavar="DIR", help="write DIR/index.html (implies --render)")
    args = parser.parse_args(argv)
    args.render = args.render or args.report is not None
    if (args.data is None) == (args.images is None) or (args.images is not None and args.labels is None):
        parser.error("give either --data TEST.pkl or --images DIR --labels FILE")
    if args.beam < 1:
        parser.error("--beam must be at least 1")
    if (args.glyph_scale is not None or args.scales != 1 or args.glyph_estimator is not None) and args.images is None:
        parser.error("--glyph-scale, --scales and --glyph-estimator apply to --images "
                     "(a dataset is read at its stored glyph sizes)")
    device = "cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu"
    start = time.perf_counter()
    try:
        if args.data is not None:
            scores, rows = evaluate_dataset(args.checkpoint, args.data, beam=args.beam, batch_size=args.batch_size,
                                            limit=args.limit, device=device)
        else:
            scores, rows = evaluate_folder(args.checkpoint, args.images, args.labels, beam=args.beam,
                                           batch_size=args.batch_size, limit=args.limit, device=device,
                                           glyph_scale=args.glyph_scale, scales=args.scales,
                                           glyph_estimator=args.glyph_estimator)
    except (CheckpointError, DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    out = Path(args.out or "predictions.tsv")
    if args.render:
        return _rendered(args, rows, scores, seconds, out)
    atomic_write_text(out, "image\tprediction\treference\n" + "".join(f"{i}\t{p}\t{r}\n" for i, p, r in rows))
    if args.json:
        print(json.dumps({**scores.as_dict(), "beam": args.beam, "seconds": round(seconds, 2)}))
    else:
        print(scores)
        print(f"predictions: {out}")
    return 0


def _rendered(args: argparse.Namespace, rows: list[tuple[str, str, str]], scores: Scores, seconds: float,
              out: Path) -> int:
    """--render / --report: image metrics, breakdowns, per-sample TSV with them, the HTML report."""
    # Imported here: only --render and --report need TeX and the report's plotting.
    from pix2tex.render import RenderError
    from pix2tex.report import breakdowns, make_records, record_row, render_records, summarize, write_report

    records = make_records(rows)
    try:
        render_seconds = render_records(records, keep_images=args.report is not None)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary, parts = summarize(records), breakdowns(records)
    columns = ["image", "prediction", "reference", "corpus", "ref_tokens", "has_matrix", "token_edit", "compiled",
               "reason", "exact", "exact_no_ws", "image_edit"]
    lines = ["\t".join(columns)] + ["\t".join(str(record_row(r)[c]).replace("\t", " ") for c in columns)
                                     for r in records]
    atomic_write_text(out, "\n".join(lines) + "\n")
    if args.report is not None:
        title = f"pix2tex evaluation: {args.checkpoint or 'bundled model'} on {args.data or args.images}"
        write_report(args.report, records, summary, parts, title)
    result = {**summary, "token_accuracy": round(scores.token_accuracy, 4), "beam": args.beam,
              "seconds": round(seconds, 2), "render_seconds": round(render_seconds, 2), "breakdowns": parts}
    if args.json:
        print(json.dumps(result))
    else:
        print(scores)
        print(" ".join(f"{k} {v}" for k, v in summary.items() if k.startswith(("rendered", "does", "n_"))))
        print(f"predictions: {out}" + (f"; report: {Path(args.report) / 'index.html'}" if args.report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
