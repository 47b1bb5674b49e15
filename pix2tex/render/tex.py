r"""One sandboxed TeX pass: a batch of formulas -> one DVI (one page per formula) -> PNG pages.

This module owns everything that runs TeX or dvipng and everything that decides what may reach
them; batching, the isolation of failing formulas, the data-set files and the CLI are
:mod:`pix2tex.render.renderer`'s.

* :func:`check_formula` says why a formula must not reach TeX (length, control characters, ``^^``,
  :data:`FORBIDDEN_COMMANDS`, whole-document environments, unbalanced braces, nesting depth, then
  the allow-list of :mod:`pix2tex.render.allowlist`).
* :func:`run_tex` typesets a batch in one ``latex -halt-on-error`` run.  Each formula sits alone
  on its own input line inside ``\setbox0\hbox{$\displaystyle …$}`` and is shipped out with
  ``\count0`` set to its 1-based position (boxes over ``_MAX_WIDTH_PT`` x ``_MAX_HEIGHT_PT`` are
  refused inside TeX), so the DVI's page tags (read back from its postamble) and the "l.NN" of
  TeX's first error say which formula each page or error belongs to.
* :func:`_run_dvipng` rasterizes chosen pages (``-pp``) once per resolution, all in one sandbox;
  :func:`_load_page` reads a page back as a tightly cropped 8-bit grayscale image and refuses
  huge ones; :func:`_dvipng_reason` turns dvipng's stderr into a one-line reason.

Untrusted input

* A blacklist of control words (:data:`FORBIDDEN_COMMANDS`) rejects the obvious before TeX; TeX
  itself runs with ``-no-shell-escape``, ``shell_escape=f``, ``openin_any=p`` and
  ``openout_any=p``, no font generation, stdin closed, a timeout and a memory limit; dvipng runs
  without Ghostscript, ``--picky`` and with a memory limit.  Both run inside a bubblewrap sandbox
  (:func:`sandboxed`) in which no file but the TeX installation and the run's work folder exists
  and there is no network, so even a formula that gets past every check reads nothing else.
* :func:`run_tex` itself does not check the formulas: it is the sandbox boundary, and the sandbox
  holds without the checks.  :func:`_require_tools` refuses to start where the sandbox cannot
  (``PIX2TEX_UNSAFE_NO_SANDBOX=1`` overrides, at the operator's risk).
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pix2tex.normalize import MAX_GROUP_DEPTH, group_depth, tokenize

__all__ = [
    "FONTS",
    "FORBIDDEN_COMMANDS",
    "MAX_FORMULA_CHARS",
    "UNSAFE_NO_SANDBOX",
    "RenderError",
    "TexRun",
    "check_formula",
    "run_tex",
    "sandboxed",
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
MAX_FORMULA_CHARS = 4000

# Commands seen in the shared formula files but missing from the installed packages; cheap
# look-alikes so those formulas render.  \providecommand keeps a font package's own version.
# im2latex-100k's formulas are tokenized, so lengths read "\hspace { - 0 . 2 c m }", which TeX
# rejects ("Illegal unit of measure"): \hspace, \vspace and \raisebox drop the spaces of their
# length first (1.2 % of im2latex_val needs this; normalize() writes the same length as "-0.2cm").
# Primes look past spaces: LaTeX merges ``'`` with a following ``'`` or ``^`` only when they touch,
# and the normal form writes tokens apart (``f ' ^ { 2 }``, ``K ' '``), which TeX would refuse
# ("Double superscript") though it means what ``f'^{2}`` does.
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
\def\pix@defgobble#1{\def\pix@gobblespace#1{\pix@primepeek}}\pix@defgobble{ }
\def\prim@s{\prime\pix@primepeek}
\def\pix@primepeek{\futurelet\@let@token\pix@primenext}
\def\pix@primenext{\ifx\@let@token\@sptoken\expandafter\pix@gobblespace\else\expandafter\pr@m@s\fi}
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
class TexRun:
    """The outcome of one ``latex`` run on a batch."""

    dvi: Path | None  # None when no page was shipped
    page_tags: list[int]  # \count0 of each shipped page, in order (1-based formula positions)
    error: str | None  # TeX's first "! ..." line, "timeout", or None on success
    error_line: int | None  # the "l.NN" input line of the error, if TeX printed one


# --------------------------------------------------------------------------- checks


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
    from pix2tex.render.allowlist import check_allowed  # imported here: allowlist reads this module's blacklist

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


# --------------------------------------------------------------------------- tools


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
