"""How well and how fast a model folder reads real im2latex-100k images.

The images are the 986 real renders in ../shared/data/images/im2latex_sample (``labels.tsv``:
``images/x.png<TAB>latex``); ``--limit N`` takes the first N lines of that file, so runs with the
same N are comparable.  Every prediction goes through :class:`pix2tex.LatexOCR` (preprocessing
included) and is scored with :func:`pix2tex.metrics.score` against the normalized reference.
One JSON line per measurement, after a ``{"task": "setup", ...}`` line describing the run:

* ``accuracy``   greedy on the images as they are: BLEU, edit distance, token accuracy, exact match.
* ``scaled``     each image upscaled 2x/3x/4x (LANCZOS) with a 200 px white margin (a screenshot),
                 read with glyph-scale normalization (``method: "normalized"``, LatexOCR's default)
                 and with plain resizing (``"plain"``: ``rescale=False``, content kept at its size
                 and only shrunk to fit); ``bleu_diff`` is the BLEU change against the original
                 images read the same way (chunked in the same way, so batching is identical),
                 ``bleu_diff_vs_default`` against the originals read with normalization.
* ``beam``       beam sizes 1, 4 and 8 on the original images.
* ``throughput`` images/s for batch sizes 1, 8 and 32, PyTorch and ONNX Runtime (exported once to
                 a temporary folder; export and loading are not timed).  Batch 1 is one
                 ``predict`` call per image, the same calls ``latency`` times.
* ``latency``    median / p90 seconds of one ``predict([image])`` call (load, preprocess, decode).
* ``memory``     peak RSS of ``pix2tex predict`` (default settings) in a child process (its own
                 ``wait4`` rusage): on the N images, on the first image alone, and of only
                 importing the package (interpreter + torch: the floor).

    python -m benchmarks.realworld --checkpoint MODEL [--limit N] [--tasks accuracy,scaled] [--threads 2] --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pix2tex.checkpoint import CheckpointError, load_model_folder, resolve_model_folder
from pix2tex.dataset.dataset import DatasetError, read_labels
from pix2tex.export import export_onnx
from pix2tex.inference import LatexOCR, Prediction
from pix2tex.metrics import score
from pix2tex.normalize import normalize

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images" / "im2latex_sample"
TASKS = ("accuracy", "scaled", "beam", "throughput", "latency", "memory")
SCALES = (2, 3, 4)
SCREEN_MARGIN = 200  # px of white around an upscaled image, like a screenshot of a formula on a page
BEAMS = (1, 4, 8)
BATCHES = (1, 8, 32)
ENGINES = ("torch", "onnx")
# Upscaled variants are made this many at a time: 4x screenshots of the widest renders are ~11 MB each.
CHUNK = 32


@dataclass(frozen=True)
class Sample:
    path: Path
    reference: str  # normalized


@dataclass
class Bench:
    """The run's settings plus what several tasks share: the ONNX export and the batch-1 call timings."""

    checkpoint: str | None
    samples: list[Sample]
    threads: int
    batch_size: int
    device: str
    workdir: Path
    _onnx: Path | None = None
    _single: dict[str, tuple[list[Prediction], list[float]]] = field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        return [str(s.path) for s in self.samples]

    @property
    def references(self) -> list[str]:
        return [s.reference for s in self.samples]

    def onnx_folder(self) -> Path:
        """The model exported to ONNX (once per run, into the run's temporary folder)."""
        if self._onnx is None:
            self._onnx = export_onnx(self.checkpoint, self.workdir / "onnx")
        return self._onnx

    def ocr(self, engine: str = "torch", **settings: object) -> LatexOCR:
        """A LatexOCR for ``engine`` (default batch size unless ``settings`` say otherwise), warmed up."""
        settings.setdefault("batch_size", self.batch_size)
        if engine == "onnx":
            ocr = LatexOCR(self.onnx_folder(), engine="onnx", threads=self.threads, **settings)
        else:
            ocr = LatexOCR(self.checkpoint, device=self.device, engine="torch", **settings)
        ocr.predict(self.paths[:1])  # first-call costs (allocator, onnxruntime arenas) stay out of the timings
        return ocr

    def single_calls(self, engine: str) -> tuple[list[Prediction], list[float]]:
        """One ``predict([image])`` call per image: the predictions and each call's wall seconds."""
        if engine not in self._single:
            ocr = self.ocr(engine, batch_size=1)
            predictions, seconds = [], []
            for path in self.paths:
                start = time.perf_counter()
                predictions += ocr.predict([path])
                seconds.append(time.perf_counter() - start)
            self._single[engine] = (predictions, seconds)
        return self._single[engine]


# -- data and scoring -----------------------------------------------------------------------------------

def load_samples(folder: Path, limit: int | None) -> list[Sample]:
    """The first ``limit`` (all if None) images of ``folder/labels.tsv`` with normalized references."""
    labels = folder / "labels.tsv"
    pairs = read_labels(labels)
    if any(image is None for image, _ in pairs):
        raise DatasetError(f"{labels}: expected 'path<TAB>latex' lines")
    pairs = pairs[:limit] if limit is not None else pairs
    samples = [Sample(folder / image, normalize(latex)) for image, latex in pairs]
    missing = next((s.path for s in samples if not s.path.is_file()), None)
    if missing is not None:
        raise DatasetError(f"{missing}: image listed in {labels} not found")
    if not samples:
        raise DatasetError(f"{labels}: no images")
    return samples


def score_fields(predictions: Sequence[Prediction], references: Sequence[str]) -> dict[str, float | int]:
    """Metric fields of a JSON line; unreadable images count as empty predictions (and in ``errors``)."""
    scores = score([p.latex or "" for p in predictions], references).as_dict()
    fields: dict[str, float | int] = {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}
    fields["errors"] = sum(p.error is not None for p in predictions)
    return fields


def screenshot(img: Image.Image, factor: int, margin: int = SCREEN_MARGIN) -> Image.Image:
    """``img`` upscaled ``factor`` times (LANCZOS) on a white canvas with ``margin`` px on every side."""
    big = img.resize((img.width * factor, img.height * factor), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (big.width + 2 * margin, big.height + 2 * margin), (255, 255, 255))
    canvas.paste(big, (margin, margin))
    return canvas


def predict_variant(ocr: LatexOCR, paths: Sequence[str], make: Callable[[Image.Image], Image.Image]
                    ) -> tuple[list[Prediction], float]:
    """Predict ``make(image)`` for every path, CHUNK images at a time; returns predictions and predict seconds."""
    predictions: list[Prediction] = []
    seconds = 0.0
    for lo in range(0, len(paths), CHUNK):
        images = []
        for path in paths[lo:lo + CHUNK]:
            with Image.open(path) as img:
                images.append(make(img.convert("RGB")))
        start = time.perf_counter()
        predictions += ocr.predict(images)
        seconds += time.perf_counter() - start
    return predictions, seconds


def _timed_predict(ocr: LatexOCR, paths: Sequence[str]) -> tuple[list[Prediction], float]:
    start = time.perf_counter()
    predictions = ocr.predict(list(paths))
    return predictions, time.perf_counter() - start


# -- tasks ----------------------------------------------------------------------------------------------

def task_accuracy(bench: Bench) -> Iterator[dict]:
    predictions, seconds = _timed_predict(bench.ocr(), bench.paths)
    yield {"task": "accuracy", "beam": 1, "batch": bench.batch_size, **score_fields(predictions, bench.references),
           "seconds": round(seconds, 3)}


def task_scaled(bench: Bench) -> Iterator[dict]:
    variants: list[tuple[str, Callable[[Image.Image], Image.Image]]] = [("original", lambda img: img)]
    variants += [(f"up{f}_margin{SCREEN_MARGIN}", lambda img, f=f: screenshot(img, f)) for f in SCALES]
    default_bleu = None
    for method, rescale in (("normalized", True), ("plain", False)):
        ocr = bench.ocr(rescale=rescale)
        original_bleu = None
        for name, make in variants:
            predictions, seconds = predict_variant(ocr, bench.paths, make)
            fields = score_fields(predictions, bench.references)
            if name == "original":
                original_bleu = fields["bleu"]
                default_bleu = original_bleu if rescale else default_bleu
            yield {"task": "scaled", "variant": name, "method": method, "rescale": rescale, **fields,
                   "bleu_diff": round(fields["bleu"] - original_bleu, 4),
                   "bleu_diff_vs_default": round(fields["bleu"] - default_bleu, 4),
                   "seconds": round(seconds, 3)}


def task_beam(bench: Bench) -> Iterator[dict]:
    for beam in BEAMS:
        predictions, seconds = _timed_predict(bench.ocr(beam=beam), bench.paths)
        yield {"task": "beam", "beam": beam, "batch": bench.batch_size,
               **score_fields(predictions, bench.references), "seconds": round(seconds, 3)}


def task_throughput(bench: Bench) -> Iterator[dict]:
    reference_outputs: dict[int, list[str | None]] = {}
    # PyTorch also runs each batch size with the whole batch encoded at once (encoder_batch = batch),
    # side by side with its default of a few images at a time, which bounds memory.
    runs = [("torch", b, None) for b in BATCHES] + [("torch", b, b) for b in BATCHES if b > 1]
    runs += [("onnx", b, None) for b in BATCHES]
    for engine, batch, encoder_batch in runs:
        if batch == 1:
            predictions, times = bench.single_calls(engine)
            seconds = sum(times)
        else:
            ocr = bench.ocr(engine, batch_size=batch, encoder_batch=encoder_batch)
            predictions, seconds = _timed_predict(ocr, bench.paths)
        row = {"task": "throughput", "engine": engine, "batch": batch,
               "encoder_batch": encoder_batch or "default", "images_per_s": round(len(predictions) / seconds, 3),
               **score_fields(predictions, bench.references), "seconds": round(seconds, 3)}
        outputs = [p.latex for p in predictions]
        if engine == "torch" and encoder_batch is None:
            reference_outputs[batch] = outputs
        else:  # whole-batch encoding and the ONNX graphs should reproduce PyTorch's default predictions
            same = sum(a == b for a, b in zip(outputs, reference_outputs.get(batch, []), strict=False))
            row["same_as_torch"] = round(same / len(outputs), 4) if batch in reference_outputs else None
        yield row


def task_latency(bench: Bench) -> Iterator[dict]:
    for engine in ENGINES:
        _, times = bench.single_calls(engine)
        yield {"task": "latency", "engine": engine, "batch": 1,
               "median_s": round(statistics.median(times), 4),
               "p90_s": round(float(np.percentile(times, 90)), 4),
               "mean_s": round(statistics.fmean(times), 4), "max_s": round(max(times), 4),
               "n": len(times), "seconds": round(sum(times), 3)}


# Runs ``python ARGS...`` from a fresh, small interpreter and writes that child's own rusage to REPORT.
# Linux carries a process's peak RSS across exec (it starts from the forking process's high-water
# mark), so forking the measured command straight from this benchmark (gigabytes of models and
# images) would report our peak, not its own; the launcher is only a few MB.
_LAUNCHER = """
import json, os, sys, time
report, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *args])
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as fh:
    json.dump({"maxrss": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status),
               "seconds": time.perf_counter() - start}, fh)
"""


def child_peak_rss(args: Sequence[str], threads: int, workdir: Path) -> dict:
    """Run ``python ARGS``; its own peak RSS (MiB), exit code, wall seconds and count of output lines.

    Torch in the child gets ``threads`` threads via OMP_NUM_THREADS.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    report = workdir / "rusage.json"
    report.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *args], capture_output=True, env=env)
    if not report.is_file():
        raise RuntimeError(f"memory: the launcher failed ({done.stderr.decode(errors='replace').strip()[-200:]})")
    usage = json.loads(report.read_text(encoding="utf-8"))
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    kib = usage["maxrss"] / 1024 if sys.platform == "darwin" else usage["maxrss"]
    result = {"peak_rss_mb": round(kib / 1024, 1), "returncode": usage["returncode"],
              "outputs": sum(1 for line in done.stdout.decode(errors="replace").splitlines() if line.strip()),
              "seconds": round(usage["seconds"], 3)}
    if usage["returncode"] == 2:  # the command refused to run: say why
        errors = [line for line in done.stderr.decode(errors="replace").splitlines() if line.startswith("error:")]
        result["error"] = errors[0] if errors else "exit code 2"
    return result


def task_memory(bench: Bench) -> Iterator[dict]:
    command = ["-m", "pix2tex.cli", "predict", "--format", "json", "--device", bench.device]
    if bench.checkpoint is not None:
        command += ["--checkpoint", bench.checkpoint]
    yield {"task": "memory", "variant": "import_only", "n": 0,
           **child_peak_rss(["-c", "import pix2tex.cli, pix2tex.inference"], bench.threads, bench.workdir)}
    yield {"task": "memory", "variant": "one_image", "n": 1,
           **child_peak_rss([*command, bench.paths[0]], bench.threads, bench.workdir)}
    yield {"task": "memory", "variant": "n_images", "n": len(bench.paths),
           **child_peak_rss([*command, *bench.paths], bench.threads, bench.workdir)}
    whole = ["--batch-size", "8", "--encoder-batch", "8"]  # the CLI's default batch, encoded at once
    yield {"task": "memory", "variant": "n_images_encoder_batch_8", "n": len(bench.paths),
           **child_peak_rss([*command, *whole, *bench.paths], bench.threads, bench.workdir)}


TASK_FUNCTIONS: dict[str, Callable[[Bench], Iterator[dict]]] = {
    "accuracy": task_accuracy, "scaled": task_scaled, "beam": task_beam,
    "throughput": task_throughput, "latency": task_latency, "memory": task_memory,
}


# -- command line ---------------------------------------------------------------------------------------

def parse_tasks(text: str) -> list[str]:
    """Comma-separated task names, in the order given; ValueError (one line) for unknown ones."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASK_FUNCTIONS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task {unknown[0]!r} (choose from {', '.join(TASKS)})" if unknown
                         else "--tasks: no task given")
    return list(dict.fromkeys(tasks))


def setup_line(bench: Bench, tasks: list[str]) -> dict:
    _, cfg, tokenizer, meta = load_model_folder(bench.checkpoint)
    return {"task": "setup", "checkpoint": str(resolve_model_folder(bench.checkpoint)), "tasks": tasks,
            "n": len(bench.samples), "threads": bench.threads, "batch_size": bench.batch_size,
            "device": bench.device, "torch": torch.__version__,
            "model": {"encoder": cfg.encoder_structure, "dim": cfg.dim, "encoder_depth": cfg.encoder_depth,
                      "num_layers": cfg.num_layers, "max_size": [cfg.max_height, cfg.max_width],
                      "max_seq_len": cfg.max_seq_len, "vocab": tokenizer.vocab_size, "step": meta.get("step")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.realworld", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="model folder (default: the bundled model)")
    parser.add_argument("--limit", type=int, help="use the first N images of labels.tsv")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of accuracy, scaled and beam")
    parser.add_argument("--device", default="cpu", help="device of the PyTorch engine (ONNX runs on the CPU)")
    parser.add_argument("--data", default=str(SAMPLE_DIR), help="folder with labels.tsv and images/")
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only output format)")
    args = parser.parse_args(argv)
    try:
        tasks = parse_tasks(args.tasks)
        for name in ("limit", "threads", "batch_size"):
            value = getattr(args, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        samples = load_samples(Path(args.data), args.limit)
        resolve_model_folder(args.checkpoint)
    except (ValueError, OSError) as exc:  # DatasetError and CheckpointError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="pix2tex-realworld-") as tmp:
        bench = Bench(args.checkpoint, samples, args.threads, args.batch_size, args.device, Path(tmp))
        try:
            print(json.dumps(setup_line(bench, tasks)), flush=True)
            for task in tasks:
                for row in TASK_FUNCTIONS[task](bench):
                    print(json.dumps(row), flush=True)
        except (CheckpointError, ValueError, ImportError, RuntimeError) as exc:  # e.g. a failed export
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
