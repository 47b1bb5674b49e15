r"""Render LaTeX formulas to grayscale PNG images with real TeX: the training-data renderer.

One ``latex`` run typesets a whole batch of formulas, one DVI page per formula, and one
``dvipng`` run per resolution turns the pages into images::

    python -m pix2tex.dataset.render --formulas FILE --out DIR [--dpi LOW HIGH] [--fonts NAME…]
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
* Untrusted input: a blacklist of control words (:data:`FORBIDDEN_COMMANDS`) rejects the obvious
  before TeX; TeX itself runs with ``-no-shell-escape``, ``shell_escape=f``, ``openin_any=p`` and
  ``openout_any=p``, no font generation, stdin closed, a timeout and a memory limit; dvipng runs
  without Ghostscript, ``--picky`` and with a memory limit.  Both run inside a bubblewrap sandbox
  (:func:`sandboxed`) in which no file but the TeX installation and the run's work folder exists
  and there is no network, so even a formula that gets past every check reads nothing else.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from pix2tex.fileio import atomic_write_text
from pix2tex.normalize import MAX_GROUP_DEPTH, group_depth, normalize, tokenize

__all__ = [
    "FONTS",
    "DEFAULT_FONTS",
    "DEFAULT_DPI",
    "FORBIDDEN_COMMANDS",
    "MAX_FORMULA_CHARS",
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
    "main",
]

# Font families: name -> preamble lines.  Every package here exists in the installed TeX Live
# (checked with kpsewhich); eulervm does not, so there is no Euler family.
FONTS: dict[str, str] = {
    # Computer Modern, LaTeX's default.  Its text-companion fonts (TS1: \textcircled, \textmu…)
    # exist only as Metafont sources here, so they are taken from Latin Modern instead.
    "cm": r"""\DeclareFontFamily{TS1}{cmr}{}
\DeclareFontShape{TS1}{cmr}{m}{n}{<->ssub * lmr/m/n}{}
\DeclareFontShape{TS1}{cmr}{m}{it}{<->ssub * lmr/m/it}{}
\DeclareFontShape{TS1}{cmr}{bx}{n}{<->ssub * lmr/bx/n}{}
\DeclareFontShape{TS1}{cmr}{bx}{it}{<->ssub * lmr/bx/it}{}""",
    "lmodern": r"\usepackage{lmodern}",
    "times": r"\usepackage{mathptmx}",
    "txfonts": r"\usepackage{txfonts}",
    "palatino": r"\usepackage{mathpazo}",
    "pxfonts": r"\usepackage{pxfonts}",
}
DEFAULT_FONTS: tuple[str, ...] = tuple(FONTS)
# The real im2latex-100k renders match ours at 100 dpi (median 100, 5-95 % 98-101, measured on
# the ink widths by `python -m benchmarks.render --scale`); the range brackets that scale by
# about x1.25 either way, so the same glyph sizes occur, with some spread around them.
DEFAULT_DPI: tuple[int, int] = (80, 130)
DEFAULT_DPI_STEP = 10
MAX_FORMULA_CHARS = 4000

# Commands seen in the shared formula files but missing from the installed packages; cheap
# look-alikes so those formulas render.  \providecommand keeps a font package's own version.
# im2latex-100k's formulas are tokenized, so lengths read "\hspace { - 0 . 2 c m }", which TeX
# rejects ("Illegal unit of measure"): \hspace, \vspace and \raisebox drop the spaces of their
# length first (1.2 % of im2latex_val needs this; normalize() writes the same length as "-0.2cm").
_COMPAT_MACROS = r"""\providecommand{\overparen}[1]{\overset{\frown}{#1}}
\providecommand{\underparen}[1]{\underset{\smile}{#1}}
\providecommand{\llbracket}{\mathopen{[\mkern-3.5mu[}}
\providecommand{\rrbracket}{\mathclose{]\mkern-3.5mu]}}
\providecommand{\Perp}{\mathrel{\perp\mkern-10mu\perp}}
\makeatletter
\def\pix@unspaced#1#2{\edef\pix@call{\noexpand#1{\zap@space#2 \@empty}}\pix@call}
\expandafter\let\expandafter\pix@hspace\csname hspace \endcsname
\expandafter\let\expandafter\pix@vspace\csname vspace \endcsname
\expandafter\let\expandafter\pix@raisebox\csname raisebox \endcsname
\DeclareRobustCommand\hspace{\@ifstar{\pix@unspaced{\pix@hspace*}}{\pix@unspaced\pix@hspace}}
\DeclareRobustCommand\vspace{\@ifstar{\pix@unspaced{\pix@vspace*}}{\pix@unspaced\pix@vspace}}
\DeclareRobustCommand\raisebox[1]{\pix@unspaced\pix@raisebox{#1}}
\makeatother"""

# Limits of one page: bigger boxes are refused in TeX (\errmessage) before dvipng allocates them.
_MAX_WIDTH_PT = 3000
_MAX_HEIGHT_PT = 1000

_PREAMBLE = r"""\documentclass[12pt]{article}
\usepackage{amsmath,amssymb}
%(font)s
\usepackage{bm,mathrsfs}
%(compat)s
\pagestyle{empty}
\newcommand\pixship[1]{%%
  \ifdim\wd0>%(maxwd)dpt \errmessage{formula too large}\fi
  \ifdim\dimexpr\ht0+\dp0\relax>%(maxht)dpt \errmessage{formula too large}\fi
  \count0=#1\relax\shipout\box0\relax}
\begin{document}
"""
# Each formula sits alone on line 2 of its chunk, so a '%' in it ends at the newline and the
# error's "l.NN" tells which formula TeX was reading.
_FORMULA_CHUNK = "\\setbox0\\hbox{$\\displaystyle\n%s\n$}\\pixship{%d}\n"
_LINES_PER_FORMULA = 3

# Control words that read or write files, run programs, redefine things, change catcodes or
# break the document around the formula.  Matched as whole control words before TeX runs;
# the TeX sandbox (run_tex) holds even without this list.
FORBIDDEN_COMMANDS: frozenset[str] = frozenset(
    r"""\input \include \includeonly \InputIfFileExists \IfFileExists \openin \openout \closein
    \closeout \read \readline \write \message \typeout \wlog \immediate \special \shipout \endinput
    \scantokens \catcode \def \edef \gdef \xdef \let \futurelet \global \globaldefs \long \outer
    \protected \newcommand \renewcommand \providecommand \DeclareRobustCommand \newenvironment
    \renewenvironment \newcounter \setcounter \addtocounter \stepcounter \refstepcounter
    \csname \endcsname \usepackage \RequirePackage \documentclass \LoadClass \loop \repeat
    \jobname \output \everypar \everymath \everydisplay \everyhbox \everyvbox \everycr \everyjob
    \everyeof \afterassignment \aftergroup \makeatletter \makeatother \font \batchmode
    \nonstopmode \scrollmode \errorstopmode \dump \stop \errmessage \errhelp \primitive
    \directlua \show \showbox \showlists \showthe \showtokens \showgroups \showifs
    \uppercase \lowercase \mathcode \delcode \lccode \uccode \sfcode \count \dimen \skip \toks
    \countdef \dimendef \skipdef \toksdef \chardef \mathchardef \newtoks \newcount \newdimen
    \newskip \newbox \newread \newwrite \setbox \box \copy \unhbox \unvbox \vsplit
    \NewDocumentCommand \RenewDocumentCommand \ProvideDocumentCommand \DeclareDocumentCommand
    \NewExpandableDocumentCommand \NewDocumentEnvironment \RenewDocumentEnvironment
    \ExplSyntaxOn \ExplSyntaxOff \AddToHook \AddToHookNext \AtBeginDocument \AtEndDocument
    \AtBeginShipout \AtBeginDvi""".split()
)
# Whole families: pdfTeX primitives (file access, literals) and tracing (log floods).
_FORBIDDEN_PREFIXES = ("pdf", "tracing")
# A control word (group 1) or a control symbol, scanned as TeX does (\\input is \\ then "input").
_CONTROL_SEQUENCE = re.compile(r"\\(?:([A-Za-z]+)|.)", re.DOTALL)
# Whole-document markers are legal control words in other contexts, so they are checked apart.
_FORBIDDEN_ENVIRONMENTS = re.compile(r"\\(begin|end)\s*\{\s*(document|filecontents\*?)\s*\}")
_ESCAPED = re.compile(r"\\.", re.DOTALL)
_BRACES = re.compile(r"[{}]")
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is a space; a newline is not allowed

_TEX_ENV = {
    "shell_escape": "f",  # no \write18, whatever texmf.cnf says
    "openin_any": "p",  # paranoid: no absolute paths, no "..", no dot files
    "openout_any": "p",
    # Never generate fonts on the fly (a crafted \font would start metafont and write a cache).
    "MKTEXTFM": "0",
    "MKTEXPK": "0",
    "MKTEXMF": "0",
    "MKTEXTEX": "0",
    "MKTEXFMT": "0",
}
_DVIPNG_MEMORY_BYTES = 512 << 20
# Ink can lie outside the box TeX measured (\rlap, negative kerns): the image is checked too.
_MAX_IMAGE_SIDE = 12_500  # pixels: 3000pt at 300 dpi
# The largest real renders are under 0.3 MP; a page far over that was shipped by something other
# than the formula box (a redefined output routine) and is refused.
_MAX_IMAGE_PIXELS = 8_000_000


class RenderError(Exception):
    """A problem with the renderer's input or installation (not with a single formula)."""


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


@dataclass(frozen=True)
class TexRun:
    """The outcome of one ``latex`` run on a batch."""

    dvi: Path | None  # None when no page was shipped
    page_tags: list[int]  # \count0 of each shipped page, in order (1-based formula positions)
    error: str | None  # TeX's first "! ..." line, "timeout", or None on success
    error_line: int | None  # the "l.NN" input line of the error, if TeX printed one


# --------------------------------------------------------------------------- checks and choices


def check_formula(formula: str) -> str | None:
    """Why ``formula`` must not reach TeX (empty, too long, forbidden command…), or None."""
    if not formula.strip():
        return "empty formula"
    if len(formula) > MAX_FORMULA_CHARS:
        return f"formula too long ({len(formula)} > {MAX_FORMULA_CHARS} characters)"
    if _CONTROL_CHAR.search(formula):
        return "forbidden control character"
    if "^^" in formula:  # TeX reads ^^5c as a backslash: it would hide any control word
        return "forbidden sequence ^^"
    for match in _CONTROL_SEQUENCE.finditer(formula):
        word = match.group(1)
        if word and ("\\" + word in FORBIDDEN_COMMANDS or word.startswith(_FORBIDDEN_PREFIXES)):
            return f"forbidden command \\{word}"
    document = _FORBIDDEN_ENVIRONMENTS.search(formula)
    if document:
        return "forbidden command " + document.group(0)
    if not _braces_balanced(formula):
        return "unbalanced braces"
    tokens = tokenize(formula)
    if group_depth(tokens) > MAX_GROUP_DEPTH:
        return f"groups nested deeper than {MAX_GROUP_DEPTH} levels"
    from pix2tex.dataset.allowlist import check_allowed  # imported here: allowlist reads this module's blacklist

    return check_allowed(tokens)


def _braces_balanced(formula: str) -> bool:
    """Whether ``{``/``}`` balance (ignoring ``\\{``, ``\\}`` and comments), as TeX would need.

    Checked before TeX because an unclosed group would swallow the wrapper around the formula
    and turn one bad formula into a confusing error further down the batch.
    """
    code = _ESCAPED.sub("", formula).split("%", 1)[0]  # \{ \} \% are not braces or comments
    depth = 0
    for brace in _BRACES.findall(code):
        depth += 1 if brace == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def choose_style(line: int, settings: RenderSettings) -> tuple[str, int]:
    """The (font, dpi) of input line ``line``: a pure function of the seed and the line number.

    Seeding per line keeps a formula's style independent of the file's length, batching and
    worker count (``--limit`` renders a prefix identically).
    """
    rng = random.Random(f"pix2tex-render/{settings.seed}/{line}")
    return rng.choice(settings.fonts), rng.choice(settings.dpi_levels())


# --------------------------------------------------------------------------- TeX and dvipng


def _tex_source(formulas: Sequence[str], font: str) -> str:
    head = _PREAMBLE % {
        "font": FONTS[font],
        "compat": _COMPAT_MACROS,
        "maxwd": _MAX_WIDTH_PT,
        "maxht": _MAX_HEIGHT_PT,
    }
    body = "".join(_FORMULA_CHUNK % (f, k) for k, f in enumerate(formulas, start=1))
    return head + body + "\\end{document}\n"


def _first_formula_line(font: str) -> int:
    """Input line number (1-based) of the first formula in a batch file."""
    return _tex_source([], font).count("\n") - 1 + 2  # minus "\end{document}", plus chunk offset


# The operating-system sandbox around every latex and dvipng run (bubblewrap, Debian's package
# "bubblewrap"): new user, PID, network, IPC and UTS namespaces; a file system that holds only the
# system's programs and libraries (/usr) and TeX's configuration and format files, read-only, plus
# the run's own work folder; an empty /tmp and a minimal /dev.  Whatever a formula makes TeX read or
# write, no other file of the machine exists for it, and it has no network.
_SANDBOX_RO = ("/usr", "/etc/texmf", "/var/lib/texmf")
_TEX_MEMORY_BYTES = 1 << 30
UNSAFE_NO_SANDBOX = "PIX2TEX_UNSAFE_NO_SANDBOX"  # set to 1 only where namespaces are unavailable


def _sandbox_enabled() -> bool:
    return os.environ.get(UNSAFE_NO_SANDBOX) != "1"


def sandboxed(cmd: Sequence[str], workdir: Path) -> list[str]:
    """``cmd`` wrapped in bubblewrap so that it sees only the TeX installation and ``workdir``."""
    if not _sandbox_enabled():
        return list(cmd)
    work = str(workdir.resolve())
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    for path in _SANDBOX_RO:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
             "--dev", "/dev", "--tmpfs", "/tmp", "--bind", work, work, "--chdir", work,
             "--setenv", "HOME", work, "--", *cmd]
    return args


def _address_space(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` (it runs in the child between fork and exec) that caps its address space."""
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TEXMFOUTPUT", None)  # TeX's fallback folder for output it cannot write in cwd
    env.update(_TEX_ENV)
    return env


def run_tex(formulas: Sequence[str], font: str, workdir: Path, timeout_s: float) -> TexRun:
    """Run ``latex`` once on ``formulas`` (no blacklist check: this is the sandbox boundary).

    TeX runs in ``workdir`` with shell escape off, paranoid file access, stdin closed and a
    timeout.  The DVI's page tags, TeX's first error line and its input line are returned.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tex = workdir / "batch.tex"
    tex.write_text(_tex_source(formulas, font), encoding="utf-8")
    dvi = workdir / "batch.dvi"
    dvi.unlink(missing_ok=True)
    (workdir / "batch.log").unlink(missing_ok=True)
    cmd = ["latex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error", tex.name]
    try:
        # Output goes to a pipe, not DEVNULL: waiting on a pipe returns as soon as TeX ends,
        # while a plain wait with a timeout polls with sleeps of up to 50 ms.
        proc = subprocess.run(
            sandboxed(cmd, workdir),
            cwd=workdir,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            preexec_fn=_address_space(_TEX_MEMORY_BYTES),
        )
    except subprocess.TimeoutExpired:
        # A killed TeX leaves a DVI without postamble: nothing in it can be trusted.
        return TexRun(dvi=None, page_tags=[], error="timeout", error_line=None)
    error, error_line = _log_error(workdir / "batch.log")
    if proc.returncode != 0 and error is None:
        error = f"latex exited with code {proc.returncode}"
    tags = _dvi_page_tags(dvi.read_bytes()) if dvi.exists() else []
    if tags is None:
        return TexRun(dvi=None, page_tags=[], error=error or "unreadable DVI", error_line=error_line)
    return TexRun(dvi=dvi if tags else None, page_tags=tags, error=error, error_line=error_line)


def _log_error(log: Path) -> tuple[str | None, int | None]:
    """TeX's first error line ("! …") and the input line number ("l.NN") reported with it."""
    if not log.exists():
        return None, None
    error, line = None, None
    for text in log.read_text(encoding="latin-1").splitlines():
        if error is None:
            if text.startswith("! "):
                error = text.strip()
        else:
            m = re.match(r"l\.(\d+)\b", text)
            if m:
                line = int(m.group(1))
                break
    return error, line


def _dvi_page_tags(data: bytes) -> list[int] | None:
    r"""The ``\count0`` of every page, read backwards from the postamble; None if malformed."""
    end = len(data)
    while end > 0 and data[end - 1] == 223:  # trailing 223s pad the file
        end -= 1
    if end < 6 or data[end - 1] != 2 or data[end - 6] != 249:  # id byte, post_post opcode
        return None
    post = int.from_bytes(data[end - 5 : end - 1], "big")
    if post + 5 > len(data) or data[post] != 248:
        return None
    pointer = int.from_bytes(data[post + 1 : post + 5], "big", signed=True)
    tags: list[int] = []
    while pointer != -1:
        if not 0 <= pointer < post or data[pointer] != 139 or len(tags) > 1_000_000:
            return None
        tags.append(int.from_bytes(data[pointer + 1 : pointer + 5], "big", signed=True))
        pointer = int.from_bytes(data[pointer + 41 : pointer + 45], "big", signed=True)
    return tags[::-1]


def _dvipng_command(dvi_name: str, pages: Sequence[int], dpi: int) -> list[str]:
    # dvipng runs inside the DVI's folder: the output name must be relative to it.
    return [
        "dvipng", "-T", "tight", "-D", str(dpi), "-bg", "rgb 1 1 1", "-fg", "rgb 0 0 0",
        "--dvinum", "--nogs", "--norawps", "--picky", "-M", "-z", "1",
        "-pp", ",".join(map(str, pages)), "-o", f"d{dpi}-%07d.png", dvi_name,
    ]  # fmt: skip


def _run_dvipng(dvi: Path, by_dpi: dict[int, list[int]],
                timeout_s: float) -> dict[int, tuple[dict[int, Path], str]]:
    """Rasterize DVI pages (by \\count0) at each resolution of ``by_dpi`` ({dpi: tags}).

    One sandbox for all resolutions (starting one costs about 15 ms): a fixed shell script, made
    of integers and fixed names only, runs dvipng once per resolution with its stderr in a file.
    Returns {dpi: ({tag: png path}, dvipng's stderr)}.
    """
    script = "".join(
        " ".join(shlex.quote(a) for a in _dvipng_command(dvi.name, tags, dpi)) + f" 2> dvipng-{dpi}.err\n"
        for dpi, tags in sorted(by_dpi.items()))
    (dvi.parent / "dvipng.sh").write_text(script, encoding="ascii")
    timed_out = False
    try:
        subprocess.run(
            sandboxed(["/bin/sh", "dvipng.sh"], dvi.parent),
            cwd=dvi.parent,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
            preexec_fn=_address_space(_DVIPNG_MEMORY_BYTES),  # inherited by each dvipng
        )
    except subprocess.TimeoutExpired:
        timed_out = True
    out = {}
    for dpi, tags in by_dpi.items():
        err = dvi.parent / f"dvipng-{dpi}.err"
        stderr = err.read_text(encoding="utf-8", errors="replace") if err.exists() else ""
        if timed_out:
            stderr += "\ndvipng timeout"
        found = {}
        for tag in tags:
            path = dvi.parent / f"d{dpi}-{tag:07d}.png"
            if path.exists():
                found[tag] = path
        out[dpi] = (found, stderr)
    return out


def _dvipng_reason(stderr: str) -> str:
    """dvipng's last warning or error, without the page position (so it reads like TeX's)."""
    # Warnings can share a line; the first one names the cause (missing font or glyph).
    messages = re.split(r"(?=dvipng warning:|dvipng: Fatal error)", stderr)
    messages = [re.sub(r"\bat \(-?\d+,-?\d+\) ", "", " ".join(m.split())) for m in messages]
    messages = [m for m in messages if m.startswith("dvipng")]
    return messages[0] if messages else "dvipng produced no image"


_INVERT = [255 - v for v in range(256)]  # lookup table: ink becomes non-zero for getbbox()


def _load_page(path: Path) -> Image.Image | str | None:
    """dvipng's palette PNG as a tightly cropped 8-bit grayscale image.

    Returns "empty render" for a page without ink, "image too large" for a huge one, and None
    for a file dvipng left unfinished (killed by the timeout or the memory limit).
    """
    try:
        with Image.open(path) as im:
            if max(im.size) > _MAX_IMAGE_SIDE or im.width * im.height > _MAX_IMAGE_PIXELS:
                return "image too large"
            gray = im.convert("L")
    except Image.DecompressionBombError:
        return "image too large"
    except (OSError, SyntaxError, ValueError):
        return None
    # dvipng's own tight box can keep a white row or column; crop to the non-white pixels.
    bbox = gray.point(_INVERT).getbbox()
    return gray.crop(bbox) if bbox else "empty render"


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
        for i, result in zip(todo, rendered):
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
    for first, second in zip(rendered, again):
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
        for f, o in zip(formulas, outcome)
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
        for line, formula, result in zip(job.lines, job.formulas, outcome):
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


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _require_tools() -> None:
    for tool in ("latex", "dvipng"):
        if shutil.which(tool) is None:
            raise RenderError(f"{tool} not found on PATH: install TeX Live (latex, dvipng)")
    if not _sandbox_enabled():
        return
    if shutil.which("bwrap") is None:
        raise RenderError("bwrap not found on PATH: TeX runs only inside its sandbox; install it "
                          f"(apt-get install bubblewrap), or set {UNSAFE_NO_SANDBOX}=1 to render without it")
    probe = subprocess.run(sandboxed(["true"], Path(tempfile.gettempdir())), capture_output=True, text=True,
                           timeout=30)
    if probe.returncode != 0:
        raise RenderError(f"the TeX sandbox (bubblewrap) cannot start here: {_one_line(probe.stderr)[:200]}; "
                          f"set {UNSAFE_NO_SANDBOX}=1 to render without it")


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
        prog="python -m pix2tex.dataset.render",
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
