"""The allow-list of LaTeX commands and environments a formula may use before it reaches TeX.

A blacklist cannot hold: LaTeX builds any command from its name (``\\UseName{gdef}``,
``\\begin{NAME}``, ``\\csname … \\endcsname``), so a formula never has to spell a forbidden word.
The allow-list turns this around: every control sequence and every environment of a formula must be
one that real formulas use.  The list (``allowed_latex.txt`` beside this file) is made from the
training corpora with

    python -m pix2tex.render.allowlist --formulas ../shared/data/formulas ../shared/data/multiline \\
        --out pix2tex/render/allowed_latex.txt

which keeps every command and environment the formulas use, plus amsmath's usual math
environments (:data:`STANDARD_ENVIRONMENTS`), LaTeX's and amsmath's named operators
(:data:`STANDARD_OPERATORS`) and the commands the normalizer knows
(:data:`KNOWN_COMMANDS`), except those in :data:`NEVER` (the
renderer's blacklist plus the commands that build names, expand in odd orders, or change how TeX
reads input); those are listed in the file's header with how often real formulas used them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from pix2tex.fileio import atomic_write_text
from pix2tex.normalize import _ARITY, _DIMENSION_ARG, _DIMENSION_FOLLOWS, _NAMED_OPERATORS, _OPTIONAL_ARG, tokenize

# tex.py imports check_allowed inside check_formula, so importing it here makes no cycle.
from pix2tex.render.tex import FORBIDDEN_COMMANDS

__all__ = ["ALLOWED_FILE", "NEVER", "STANDARD_ENVIRONMENTS", "STANDARD_OPERATORS", "allowed_latex", "check_allowed",
           "build_allowlist", "main"]

ALLOWED_FILE = Path(__file__).resolve().parent / "allowed_latex.txt"

# Never allowed, even when a corpus uses them: they build command names, read or write files,
# define or redefine, change category codes or expansion order, or reach the output routine.
_NAME_BUILDERS = r"""\UseName \ExpandArgs \expandafter \noexpand \string \detokenize \unexpanded \meaning
    \romannumeral \number \the \edef \futurelet \afterassignment \aftergroup \csname \endcsname
    \ifcsname \ifdefined \begingroup \endgroup \lowercase \uppercase \scantokens \input \@@input
    \openin \read \readline \catcode \def \gdef \xdef \let \global \long \outer \protected \relax
    \iffalse \iftrue \ifx \ifnum \ifdim \ifcase \else \fi \or \loop \repeat \par \vadjust \insert
    \mark \marks \penalty \pagebreak \newpage \clearpage \vfill \vskip \vspace""".split()


# Math environments of LaTeX and amsmath that every user expects, whether or not the corpora use them.
STANDARD_ENVIRONMENTS = """matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases array aligned
    alignedat gathered split subarray""".split()

# The named operators of LaTeX and amsmath, likewise: the corpora spell some of them only as
# \operatorname*{sup} (im2latex's normalization did), so a user's \sup was refused before.  Those
# the normalizer folds \operatorname into, and amsmath's limits that have no \operatorname spelling.
STANDARD_OPERATORS = sorted({*_NAMED_OPERATORS.values(),
                             *r"\injlim \projlim \varinjlim \varprojlim \varliminf \varlimsup".split()})


def _known_commands() -> frozenset[str]:
    """Commands the normalizer knows the arguments of (all defined by the renderer's preamble)."""
    return frozenset(_ARITY) | frozenset(_DIMENSION_ARG) | frozenset(_DIMENSION_FOLLOWS) | frozenset(_OPTIONAL_ARG)


KNOWN_COMMANDS = _known_commands()


def _forbidden() -> frozenset[str]:
    return frozenset(FORBIDDEN_COMMANDS) | frozenset(_NAME_BUILDERS)


NEVER = _forbidden()


def _is_command(token: str) -> bool:
    return token.startswith("\\") and len(token) > 1


def build_allowlist(formulas: Iterable[str]) -> tuple[list[str], Counter[str]]:
    """The sorted commands/environments ``formulas`` use outside :data:`NEVER`, and how often
    (in how many formulas) each command of :data:`NEVER` was used."""
    used: Counter[str] = Counter()
    for formula in formulas:
        used.update({t for t in tokenize(formula) if _is_command(t)})
    refused = Counter({t: n for t, n in used.items() if t in NEVER})
    standard = {f"\\{side}{{{env}}}" for env in STANDARD_ENVIRONMENTS for side in ("begin", "end")}
    return sorted((set(used) | standard | set(STANDARD_OPERATORS) | KNOWN_COMMANDS) - NEVER), refused


@lru_cache(maxsize=1)
def allowed_latex() -> frozenset[str]:
    """The committed allow-list (``\\begin{matrix}`` / ``\\end{matrix}`` count as commands)."""
    lines = ALLOWED_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#")) - NEVER


def check_allowed(formula: str | list[str]) -> str | None:
    """Why ``formula`` (LaTeX, or its :func:`~pix2tex.normalize.tokenize` tokens) uses something
    outside the allow-list, or None."""
    allowed = allowed_latex()
    for token in tokenize(formula) if isinstance(formula, str) else formula:
        if token.startswith("\\\\["):  # a row break with its space (\\[2pt]): a length, nothing to run
            token = "\\\\"
        if _is_command(token) and token not in allowed:
            if token.startswith(("\\begin{", "\\end{")):
                return f"environment {token[token.index('{'):]} is not on the allow-list"
            if token.startswith(("\\begin", "\\end")):  # \begin without a plain {name}
                return f"{token} without a plain environment name"
            return f"command {token} is not on the allow-list"
    return None


def _read_formula_files(source: Path) -> list[str]:
    files = sorted(source.glob("*.txt")) if source.is_dir() else [source]
    return [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.render.allowlist", description=__doc__.splitlines()[0])
    parser.add_argument("--formulas", type=Path, nargs="+", required=True,
                        help="formula files or folders of *.txt files")
    parser.add_argument("--out", type=Path, default=ALLOWED_FILE)
    args = parser.parse_args(argv)
    for source in args.formulas:
        if not source.exists():
            print(f"error: {source}: no such formula file or folder", file=sys.stderr)
            return 2
    formulas = [f for source in args.formulas for f in _read_formula_files(source)]
    allowed, refused = build_allowlist(formulas)
    header = [
        "# LaTeX commands and environments formulas may use (python -m pix2tex.render.allowlist).",
        f"# Made from {len(formulas):,} formulas; every command they use, except these, which are never",
        "# allowed (in how many of those formulas each appeared):",
        *[f"#   {t} {n}" for t, n in sorted(refused.items(), key=lambda kv: (-kv[1], kv[0]))],
    ]

    atomic_write_text(args.out, "\n".join(header + allowed) + "\n")
    print(f"wrote {args.out}: {len(allowed)} allowed; {sum(refused.values())} formulas used a refused command")
    return 0


if __name__ == "__main__":
    sys.exit(main())
