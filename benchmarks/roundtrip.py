"""Does ``normalize()`` keep what a formula looks like?  Render each formula and its normalization.

    python -m benchmarks.roundtrip [--n 2000] [--workers 2] [--font cm] [--dpi 120] --json

For a seeded sample of ``n`` lines of every file in ../shared/data/formulas (and of the multi-line
environments of ../shared/data/multiline/arxiv_multiline.txt), renders the original
and ``normalize(original)`` with the same font and resolution and prints one JSON line per file:
the share of pixel-identical pairs (over formulas that rendered both ways), the same share for
formulas without text-mode commands (where the normalizer's splitting of words into letters
changes the spacing, a known and accepted difference), how often normalizing made a formula
fail to compile or fixed it, and examples of the mismatches.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pix2tex.normalize import normalize
from pix2tex.render import render_images

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FORMULAS_DIR = SHARED_DATA / "formulas"
SINGLE_LINE = ("im2latex_val", "k12_exam", "hme100k", "chem_units", "arxiv_display_math", "im2latex170k_arxiv2018")
# Where each file lives: the single-line formula files, and the multi-line environments.
PATHS = {**{name: FORMULAS_DIR / f"{name}.txt" for name in SINGLE_LINE},
         "arxiv_multiline": SHARED_DATA / "multiline" / "arxiv_multiline.txt"}
FILES = tuple(PATHS)
# Arguments typeset in text mode, where spaces matter and normalize() drops them.
TEXT_MODE = re.compile(r"\\(text[a-z]*|mbox|hbox|emph|fbox|framebox|makebox|parbox)(?![A-Za-z])")
_CHUNK = 100


def has_text_mode(formula: str) -> bool:
    """Whether the formula has an argument typeset in text mode (``\\text{…}``, ``\\mbox{…}``…)."""
    return TEXT_MODE.search(formula) is not None


def sample(path: Path, n: int, seed: int) -> list[str]:
    """``n`` non-empty lines of ``path``, drawn with ``seed``, in file order."""
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    picked = sorted(random.Random(seed).sample(range(len(lines)), min(n, len(lines))))
    return [lines[i] for i in picked]


def _compare_chunk(args: tuple[list[str], str, int]) -> list[tuple[str, str, str]]:
    """(status, original, normalized) per formula; status is one of the keys counted in run()."""
    formulas, font, dpi = args
    normalized = [normalize(f) for f in formulas]
    with tempfile.TemporaryDirectory(prefix="pix2tex-roundtrip-") as tmp:
        results = render_images([*formulas, *normalized], font, dpi, tmp)
    out = []
    for k, (f, g) in enumerate(zip(formulas, normalized, strict=True)):
        a, b = results[k], results[len(formulas) + k]
        if not a.ok and not b.ok:
            status = "both_failed"
        elif not b.ok:
            status = "normalized_failed"
        elif not a.ok:
            status = "original_failed"
        elif a.image.size == b.image.size and a.image.tobytes() == b.image.tobytes():
            status = "identical"
        else:
            status = "different"
        out.append((status, f, g))
    return out


def run(name: str, n: int, seed: int, font: str, dpi: int, workers: int, examples: int) -> dict:
    """Round-trip statistics for one shared formula file."""
    formulas = sample(PATHS[name], n, seed)
    chunks = [(formulas[i : i + _CHUNK], font, dpi) for i in range(0, len(formulas), _CHUNK)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = [row for part in pool.map(_compare_chunk, chunks) for row in part]
    count = {s: 0 for s in ("identical", "different", "normalized_failed", "original_failed", "both_failed")}
    for status, _, _ in rows:
        count[status] += 1
    both = [(s, f, g) for s, f, g in rows if s in ("identical", "different")]
    plain = [(s, f, g) for s, f, g in both if not has_text_mode(f)]
    text = [(s, f, g) for s, f, g in both if has_text_mode(f)]

    def share(group: Sequence[tuple[str, str, str]]) -> float | None:
        return round(sum(s == "identical" for s, _, _ in group) / len(group), 4) if group else None

    return {
        "task": "roundtrip",
        "file": name,
        "n": len(rows),
        "font": font,
        "dpi": dpi,
        **count,
        "identical_share": share(both),
        "identical_share_no_text": share(plain),
        "no_text_pairs": len(plain),
        "text_pairs": len(text),
        "identical_share_text": share(text),
        "examples_different_no_text": [[f, g] for s, f, g in plain if s == "different"][:examples],
        "examples_normalized_failed": [[f, g] for s, f, g in rows if s == "normalized_failed"][:examples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roundtrip", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="formulas sampled per file")
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--font", default="cm")
    parser.add_argument("--dpi", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--examples", type=int, default=5, help="mismatch examples per file")
    parser.add_argument("--json", action="store_true", help="print JSON lines (the only format)")
    args = parser.parse_args(argv)
    for name in args.files:
        if not PATHS[name].is_file():
            print(f"error: {PATHS[name]}: no such file", file=sys.stderr)
            return 1
        print(json.dumps(run(name, args.n, args.seed, args.font, args.dpi, args.workers, args.examples)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
