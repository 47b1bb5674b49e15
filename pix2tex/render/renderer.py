r"""Render LaTeX formulas to grayscale PNG images with real TeX: the training-data renderer.

One ``latex`` run typesets a whole batch of formulas, one DVI page per formula, and one
``dvipng`` run per resolution turns the pages into images::

    python -m pix2tex.render --formulas FILE --out DIR [--dpi LOW HIGH] [--fonts NAME…]
        [--workers N] [--seed S] [--batch-size N] [--limit N] [--dpi-step N] [--timeout S]

writes ``DIR/images/NNNNNNN.png`` (``NNNNNNN`` = 0-based input line), ``DIR/labels.tsv``
(``images/NNNNNNN.png<TAB>normalize(formula)``, input order), ``DIR/failed.tsv``
(``line<TAB>formula<TAB>reason``, 0-based line, reason = TeX's error line such as
``! Undefined control sequence.`` or the renderer's own, e.g. ``forbidden command \input``) and
``DIR/render.json`` (settings and counts).  The image shows the formula as written; the label is
its normalization.  Each line's font and resolution depend only on the seed and the line number,
so the same input and seed give byte-identical files whatever the number of workers.

Design notes

* Each formula is typeset as ``\setbox0\hbox{$\displaystyle …$}`` and shipped out directly with
  ``\count0`` set to its position in the batch, so a page never line-breaks or clips, the main
  vertical list stays empty, and the DVI says which formula each page belongs to.  After every
  run the page tags are read back from the DVI and must be exactly ``1..k``.
* ``latex -halt-on-error`` stops at the first bad formula.  If ``k`` pages were shipped and the
  error's input line ("l.NN") lies inside formula ``k+1``, that formula is the culprit: it is
  recorded as failed and the batch runs again without it (one extra TeX run per bad formula,
  cheaper than a bisection).  Anything less clear (timeout, wrong page tags, an error outside
  a formula) falls back to bisecting the batch.  Images are only taken from a run in which
  every formula compiled, so a label can never land on another formula's image.
* A DVI is typeset once per font (one preamble per run); the resolution is chosen per formula
  from a few steps and dvipng runs once per step present, with ``-pp`` listing those pages.
  dvipng's interactive mode (``-`` on stdin) cannot be used for this: it keeps glyphs rendered
  at the first resolution and places them at the new one.
* Untrusted input: every formula is checked before TeX, and every latex and dvipng run happens
  inside a bubblewrap sandbox with no file but the TeX installation and the run's work folder and
  no network; the checks, the sandbox and what they guarantee are :mod:`pix2tex.render.tex`'s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from pix2tex.fileio import atomic_write_text
from pix2tex.normalize import normalize

# The underscored names are tex.py's private helpers, shared with the batching below.
from pix2tex.render.tex import (
    _LINES_PER_FORMULA,
    FONTS,
    FORBIDDEN_COMMANDS,
    MAX_FORMULA_CHARS,
    UNSAFE_NO_SANDBOX,
    RenderError,
    TexRun,
    _dvipng_reason,
    _first_formula_line,
    _load_page,
    _one_line,
    _require_tools,
    _run_dvipng,
    check_formula,
    run_tex,
    sandboxed,
)

__all__ = [
    "FONTS",
    "DEFAULT_FONTS",
    "DEFAULT_DPI",
    "FORBIDDEN_COMMANDS",
    "MAX_FORMULA_CHARS",
    "UNSAFE_NO_SANDBOX",
    "RenderError",
    "RenderResult",
    "RenderSettings",
    "RenderReport",
    "TexRun",
    "check_formula",
    "choose_style",
    "read_formulas",
    "render_images",
    "render_dataset",
    "run_tex",
    "sandboxed",
    "main",
]

DEFAULT_FONTS: tuple[str, ...] = tuple(FONTS)
# The real im2latex-100k renders match ours at 100 dpi (median 100, 5-95 % 98-101, measured on
# the ink widths by `python -m benchmarks.render --scale`); the range brackets that scale by
# about x1.25 either way, so the same glyph sizes occur, with some spread around them.
DEFAULT_DPI: tuple[int, int] = (80, 130)
DEFAULT_DPI_STEP = 10


@dataclass(frozen=True)
class RenderResult:
    """One formula's outcome: an 8-bit grayscale image, or the reason it failed."""

    formula: str
    image: Image.Image | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


@dataclass(frozen=True)
class RenderSettings:
    """How a data set is rendered.  The same settings and seed give byte-identical output."""

    dpi: tuple[int, int] = DEFAULT_DPI
    fonts: tuple[str, ...] = DEFAULT_FONTS
    seed: int = 0
    batch_size: int = 200
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    timeout_s: float = 10.0  # per TeX run, plus 0.1 s per formula in it
    dpi_step: int = DEFAULT_DPI_STEP

    def __post_init__(self) -> None:
        lo, hi = self.dpi
        if not 30 <= lo <= hi <= 1200:
            raise RenderError(f"dpi range {self.dpi}: need 30 <= LOW <= HIGH <= 1200")
        if not self.fonts:
            raise RenderError("fonts: need at least one font")
        unknown = [f for f in self.fonts if f not in FONTS]
        if unknown:
            raise RenderError(f"unknown font {unknown[0]!r}: choose from {', '.join(FONTS)}")
        if self.batch_size < 1 or self.workers < 1 or self.dpi_step < 1 or self.timeout_s <= 0:
            raise RenderError("batch_size, workers, dpi_step and timeout_s must be positive")

    def dpi_levels(self) -> list[int]:
        """The resolutions a formula can get: LOW, LOW+step, … up to HIGH."""
        lo, hi = self.dpi
        return list(range(lo, hi + 1, self.dpi_step))


@dataclass
class RenderReport:
    """What :func:`render_dataset` did."""

    total: int
    rendered: int
    failures: list[tuple[int, str, str]]  # (line, formula, reason)
    seconds: float
    out_dir: Path

    @property
    def failed(self) -> int:
        return len(self.failures)


# --------------------------------------------------------------------------- choices


def choose_style(line: int, settings: RenderSettings) -> tuple[str, int]:
    """The (font, dpi) of input line ``line``: a pure function of the seed and the line number.

    Seeding per line keeps a formula's style independent of the file's length, batching and
    worker count (``--limit`` renders a prefix identically).
    """
    rng = random.Random(f"pix2tex-render/{settings.seed}/{line}")
    return rng.choice(settings.fonts), rng.choice(settings.dpi_levels())


# --------------------------------------------------------------------------- batches


def _render_batch(formulas: Sequence[str], font: str, dpis: Sequence[int], workdir: Path,
                  timeout_s: float) -> list[Image.Image | str]:
    """Render checked formulas in as few TeX runs as possible: an image or a reason for each."""
    results: list[Image.Image | str | None] = [None] * len(formulas)
    _render_span(list(range(len(formulas))), formulas, font, dpis, workdir, timeout_s, results)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _render_span(todo: list[int], formulas: Sequence[str], font: str, dpis: Sequence[int],
                 workdir: Path, timeout_s: float, results: list) -> None:
    """Render ``formulas[i] for i in todo`` into ``results``, isolating formulas TeX rejects.

    Pages are only rasterized from a run that compiled every formula of ``todo`` cleanly, so
    each image comes from a DVI whose page tags were checked to be exactly 1..len(todo).
    """
    todo = list(todo)
    while todo:
        run = run_tex([formulas[i] for i in todo], font, workdir, timeout_s + 0.1 * len(todo))
        shipped = len(run.page_tags)
        if run.page_tags != list(range(1, shipped + 1)) or shipped > len(todo):
            shipped = -1  # pages out of order: nothing about this run can be trusted
        if run.error is None and shipped == len(todo):
            _rasterize(run, todo, formulas, font, dpis, workdir, timeout_s, results)
            return
        if _culprit_is_next(run, shipped, len(todo), font):
            # TeX stopped inside formula todo[shipped]: it is the bad one.  Run the rest again
            # without it; re-typesetting the good prefix (~0.5 ms a formula) is cheaper than
            # rasterizing one more partial DVI (a dvipng start per resolution).
            alone = len(todo) == 1
            culprit = todo.pop(shipped)
            if not alone and _BATCH_STATE_ERROR.search(run.error or ""):
                # The batch used up something shared (TeX's memory, registers): the
                # formula may well render on its own.
                _render_span([culprit], formulas, font, dpis, workdir, timeout_s, results)
            else:
                results[culprit] = run.error
            continue
        if len(todo) == 1:
            results[todo[0]] = run.error or "page count mismatch"
            return
        # Unclear which formula is at fault (timeout, wrong pages, error outside a formula):
        # bisect.
        half = len(todo) // 2
        _render_span(todo[:half], formulas, font, dpis, workdir, timeout_s, results)
        _render_span(todo[half:], formulas, font, dpis, workdir, timeout_s, results)
        return


# Errors that depend on what earlier formulas of the batch used, not only on the formula.
_BATCH_STATE_ERROR = re.compile(r"TeX capacity exceeded|No room for a new")


def _culprit_is_next(run: TexRun, shipped: int, total: int, font: str) -> bool:
    """Whether TeX's error lies inside formula number ``shipped`` (0-based) of the batch.

    Needs both witnesses to agree: exactly ``shipped`` pages came out before the error, and the
    error's input line ("l.NN") is that formula's line or the wrapper line closing it.
    """
    if run.error in (None, "timeout") or run.error_line is None or not 0 <= shipped < total:
        return False
    line = _first_formula_line(font) + _LINES_PER_FORMULA * shipped
    return line <= run.error_line <= line + 1


def _rasterize(run: TexRun, indices: Sequence[int], formulas: Sequence[str], font: str,
               dpis: Sequence[int], workdir: Path, timeout_s: float, results: list) -> None:
    """Turn the first ``len(indices)`` pages of ``run`` into images, one dvipng per resolution."""
    if not indices or run.dvi is None:
        return
    by_dpi: dict[int, list[int]] = {}
    for tag, i in enumerate(indices, start=1):
        by_dpi.setdefault(dpis[i], []).append(tag)
    missing: list[int] = []
    rasters = _run_dvipng(run.dvi, by_dpi, timeout_s * len(by_dpi) + 0.05 * len(indices))
    for dpi, tags in sorted(by_dpi.items()):
        pngs, stderr = rasters[dpi]
        for tag in tags:
            i = indices[tag - 1]
            path = pngs.get(tag)
            image = _load_page(path) if path is not None else None
            if path is not None:
                path.unlink()
            if image is not None:
                results[i] = image
            elif len(indices) == 1:
                results[i] = _dvipng_reason(stderr)
            else:
                missing.append(i)
    # A page dvipng refused (warning under --picky, memory limit, crash) is retried alone,
    # so one bad page cannot cost its neighbours their images.
    for i in missing:
        _render_span([i], formulas, font, dpis, workdir / f"alone-{i}", timeout_s, results)


# --------------------------------------------------------------------------- public API


def _check_and_render(formulas: Sequence[str], font: str, dpis: Sequence[int], workdir: Path,
                      timeout_s: float) -> list[Image.Image | str]:
    """Refuse what must not reach TeX, render the rest: an image or a reason per formula."""
    outcome: list[Image.Image | str | None] = [check_formula(f) for f in formulas]
    todo = [i for i, reason in enumerate(outcome) if reason is None]
    if todo:
        rendered = _render_batch([formulas[i] for i in todo], font, [dpis[i] for i in todo],
                                 workdir, timeout_s)
        if 1 < len(todo) < len(formulas):
            rendered = _check_independence(rendered, [formulas[i] for i in todo], font, [dpis[i] for i in todo],
                                           workdir / "reversed", timeout_s)
        for i, result in zip(todo, rendered, strict=True):
            outcome[i] = result
    return outcome  # type: ignore[return-value]


INTERFERENCE = "rendering depends on the other formulas of its batch"


def _check_independence(rendered: list[Image.Image | str], formulas: Sequence[str], font: str,
                        dpis: Sequence[int], workdir: Path, timeout_s: float) -> list[Image.Image | str]:
    """Render a batch again in reverse order; a formula whose image differs between the two orders
    was changed by another formula of the batch (a global assignment that got past every check)
    and is failed, never labelled with a wrong image.

    Run only for batches in which some formula was refused: one extra TeX run there, where someone
    may be probing, instead of one per formula everywhere.
    """
    again = _render_batch(list(formulas)[::-1], font, list(dpis)[::-1], workdir, timeout_s)[::-1]
    out = []
    for first, second in zip(rendered, again, strict=True):
        if isinstance(first, Image.Image) and isinstance(second, Image.Image):
            same = first.size == second.size and first.tobytes() == second.tobytes()
            out.append(first if same else INTERFERENCE)
        elif isinstance(first, Image.Image) or isinstance(second, Image.Image):
            out.append(INTERFERENCE)
        else:
            out.append(first)
    return out


def render_images(formulas: Sequence[str], font: str = "cm", dpi: int = 100,
                  workdir: str | os.PathLike | None = None, timeout_s: float = 10.0) -> list[RenderResult]:
    """Render formulas in memory, all with one font and resolution (tests, demos).

    ``workdir`` is where TeX runs (a temporary folder inside it is used and removed);
    None means the system's temporary folder.
    """
    if font not in FONTS:
        raise RenderError(f"unknown font {font!r}: choose from {', '.join(FONTS)}")
    _require_tools()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="pix2tex-render-") as tmp:
        outcome = _check_and_render(formulas, font, [dpi] * len(formulas), Path(tmp), timeout_s)
    return [
        RenderResult(f, None, o) if isinstance(o, str) else RenderResult(f, o, None)
        for f, o in zip(formulas, outcome, strict=True)
    ]


@dataclass(frozen=True)
class _Job:
    """One batch for a worker: lines of one font, rendered straight into ``images_dir``."""

    lines: tuple[int, ...]
    formulas: tuple[str, ...]
    font: str
    dpis: tuple[int, ...]
    images_dir: Path
    workdir: Path
    timeout_s: float


def _run_job(job: _Job) -> list[tuple[int, str | None, str | None]]:
    """Render one batch, write its PNGs; returns (line, label, reason) with one of them None.

    Checking and normalizing happen here too, so that all per-formula work is spread over the
    workers.
    """
    job.workdir.mkdir(parents=True, exist_ok=True)
    try:
        outcome = _check_and_render(job.formulas, job.font, job.dpis, job.workdir, job.timeout_s)
        out: list[tuple[int, str | None, str | None]] = []
        for line, formula, result in zip(job.lines, job.formulas, outcome, strict=True):
            try:
                label = normalize(formula) if not isinstance(result, str) else ""
            except (ValueError, RecursionError) as exc:  # one bad formula is skipped, never fatal
                result = f"cannot normalize ({type(exc).__name__})"
                label = ""
            if isinstance(result, str) or not label:
                out.append((line, None, result if isinstance(result, str) else "empty label"))
                continue
            buf = io.BytesIO()
            result.save(buf, format="PNG", compress_level=1)  # 4 % bigger, a third faster than 6
            # Rename into place so a reader never sees half a PNG; one sync for the whole
            # data set happens before labels.tsv is written (see render_dataset).
            tmp = job.workdir / _image_name(line)
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, job.images_dir / _image_name(line))
            out.append((line, label, None))
        return out
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)


_IMAGE_NAME = re.compile(r"\d{7,}\.png")


def _image_name(line: int) -> str:
    return f"{line:07d}.png"


def _make_jobs(formulas: Sequence[str], settings: RenderSettings, images_dir: Path,
               workdir: Path) -> list[_Job]:
    """Group the lines by their font into batches of at most ``settings.batch_size``."""
    by_font: dict[str, list[tuple[int, int]]] = {}
    for line in range(len(formulas)):
        font, dpi = choose_style(line, settings)
        by_font.setdefault(font, []).append((line, dpi))
    jobs = []
    for font in settings.fonts:
        items = by_font.get(font, [])
        # Even batch sizes per font: a short tail batch would cost a full TeX start-up.
        n_batches = -(-len(items) // settings.batch_size)
        for b in range(n_batches):
            part = items[b * len(items) // n_batches : (b + 1) * len(items) // n_batches]
            jobs.append(_Job(
                lines=tuple(line for line, _ in part),
                formulas=tuple(formulas[line] for line, _ in part),
                font=font,
                dpis=tuple(dpi for _, dpi in part),
                images_dir=images_dir,
                workdir=workdir / f"{font}-{b}",
                timeout_s=settings.timeout_s,
            ))
    jobs.sort(key=lambda j: -len(j.lines))  # longest first balances the workers
    return jobs


def _run_jobs(jobs: Sequence[_Job], workers: int) -> Iterator[list[tuple[int, str | None, str | None]]]:
    """Each job's results, in the order the jobs finish."""
    if workers == 1 or len(jobs) <= 1:
        yield from map(_run_job, jobs)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
    try:
        for future in as_completed([pool.submit(_run_job, job) for job in jobs]):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not start more batches


def render_dataset(formulas: Sequence[str], out_dir: str | os.PathLike,
                   settings: RenderSettings | None = None,
                   progress: Callable[[int, int], None] | None = None) -> RenderReport:
    """Render ``formulas`` (one per input line) into ``out_dir``; see the module docstring.

    A formula that cannot be rendered is listed in failed.tsv and never shifts the labels of
    the others.  labels.tsv is written last, atomically, after every image it names is on disk.
    ``progress(done, total)`` is called after every finished batch.
    """
    settings = settings or RenderSettings()
    _require_tools()
    start = time.perf_counter()
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    # Tabs are TeX spaces; turning them into spaces keeps labels.tsv and failed.tsv one-line.
    formulas = [f.replace("\t", " ") for f in formulas]
    labels: dict[int, str] = {}
    failed: dict[int, str] = {}
    workdir = Path(tempfile.mkdtemp(dir=out, prefix=".render-"))
    try:
        for batch in _run_jobs(_make_jobs(formulas, settings, images_dir, workdir), settings.workers):
            for line, label, reason in batch:
                if label is not None:
                    labels[line] = label
                else:
                    failed[line] = _one_line(reason or "")
            if progress is not None:
                progress(len(labels) + len(failed), len(formulas))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    _remove_stale_images(images_dir, keep={_image_name(line) for line in labels})
    os.sync()  # the images reach the disk before the labels that point at them
    flat = [_LINE_BREAK.sub(" ", f) for f in formulas]  # a formula given with a newline is refused
    atomic_write_text(out / "failed.tsv", "".join(
        f"{line}\t{flat[line]}\t{failed[line]}\n" for line in sorted(failed)))
    atomic_write_text(out / "labels.tsv", "".join(
        f"images/{_image_name(line)}\t{labels[line]}\n" for line in sorted(labels)))
    seconds = time.perf_counter() - start
    summary = {
        "settings": {**asdict(settings), "dpi_levels": settings.dpi_levels()},
        "total": len(formulas),
        "rendered": len(labels),
        "failed": len(failed),
        "seconds": round(seconds, 3),
    }
    atomic_write_text(out / "render.json", json.dumps(summary, indent=2) + "\n")
    failures = [(line, formulas[line], failed[line]) for line in sorted(failed)]
    return RenderReport(len(formulas), len(labels), failures, seconds, out)


def _remove_stale_images(images_dir: Path, keep: set[str]) -> None:
    """Delete images of an earlier run that this run did not produce, so images/ matches labels.tsv."""
    for path in images_dir.glob("*.png"):
        if _IMAGE_NAME.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


_LINE_BREAK = re.compile(r"[\r\n]")


# --------------------------------------------------------------------------- command line


def read_formulas(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The lines of a formula file (one per line; empty lines are kept so numbering is stable)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RenderError(f"{p}: no such file") from None
    except UnicodeDecodeError as exc:
        raise RenderError(f"{p}: not valid UTF-8 at byte {exc.start}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the final newline does not start another line
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    return lines[:limit] if limit is not None else lines


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pix2tex.render",
        description="Render one LaTeX formula per line to PNG images with latex and dvipng.",
    )
    parser.add_argument("--formulas", required=True, help="text file, one formula per line")
    parser.add_argument("--out", required=True, help="output folder (images/, labels.tsv, failed.tsv)")
    parser.add_argument("--dpi", nargs=2, type=int, metavar=("LOW", "HIGH"), default=DEFAULT_DPI,
                        help="resolution range, chosen per formula (default %(default)s)")
    parser.add_argument("--dpi-step", type=int, default=DEFAULT_DPI_STEP,
                        help="resolutions are LOW, LOW+STEP, … (default %(default)s)")
    parser.add_argument("--fonts", nargs="+", default=list(DEFAULT_FONTS), metavar="NAME",
                        help=f"font families to choose from: {', '.join(FONTS)} (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=RenderSettings.batch_size,
                        help="formulas per TeX run (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=RenderSettings.timeout_s,
                        help="seconds per TeX run, plus 0.1 s per formula (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="render only the first N lines")
    return parser.parse_args(argv)


def _progress_printer() -> Callable[[int, int], None]:
    """A progress callback that prints to stderr at most every 10 seconds."""
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= 10 and done < total:
            last = time.monotonic()
            print(f"{done}/{total} formulas done", file=sys.stderr, flush=True)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.limit is not None and args.limit < 0:
            raise RenderError(f"--limit {args.limit}: must be >= 0")
        settings = RenderSettings(
            dpi=tuple(args.dpi), fonts=tuple(args.fonts), seed=args.seed,
            batch_size=args.batch_size, workers=args.workers, timeout_s=args.timeout,
            dpi_step=args.dpi_step,
        )
        formulas = read_formulas(args.formulas, args.limit)
        report = render_dataset(formulas, args.out, settings, progress=_progress_printer())
    except (RenderError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"rendered {report.rendered}/{report.total} formulas ({report.failed} failed, see "
        f"failed.tsv) in {report.seconds:.1f} s -> {report.out_dir}",
        file=sys.stderr,
    )
    if report.total and not report.rendered:
        print("error: no formula could be rendered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
