"""Where a model's readings go wrong: an error table of one predictions file.

    python -m benchmarks.errors PREDICTIONS.tsv [--top 15] [--json]

PREDICTIONS.tsv is what ``pix2tex.eval --out`` writes (image, prediction, reference).  Two views:

- **By reference length and by structure** (fractions, big operators with limits, arrays and
  matrices, accents, ``\\left…\\right``, spacing commands, text, roots, primes): for the images whose
  reference has the structure, how many, their mean edit distance, and their share of the summed
  edit distance (an image with several structures counts in each, so shares overlap).
- **By token**: every edit of the token-level alignment (rapidfuzz's Levenshtein edit operations,
  the ones the edit distance counts) as a deletion (a reference token missed), an insertion (a
  token the reference does not have) or a substitution (reference → prediction); the most frequent
  of each, with their share of all edits.

Pure functions over the file; prints Markdown tables (or one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from benchmarks.compare import read_predictions
from pix2tex.metrics import bleu, edit_distances
from pix2tex.normalize import latex_tokens

BIG_OPERATORS = {r"\sum", r"\int", r"\prod", r"\lim", r"\oint", r"\iint", r"\iiint", r"\bigcup", r"\bigcap",
                 r"\bigoplus", r"\bigotimes", r"\coprod", r"\max", r"\min", r"\sup", r"\inf", r"\limsup",
                 r"\liminf"}
ACCENTS = {r"\hat", r"\bar", r"\tilde", r"\vec", r"\dot", r"\ddot", r"\overline", r"\underline", r"\widehat",
           r"\widetilde", r"\check", r"\breve", r"\overrightarrow", r"\overleftarrow", r"\acute", r"\grave",
           r"\mathring", r"\underbrace", r"\overbrace"}
SPACING = {r"\,", r"\;", r"\:", r"\!", r"\quad", r"\qquad", "~", r"\enspace", r"\hspace", r"\hfill", r"\ "}
TEXT = {r"\text", r"\mathrm", r"\textrm", r"\mbox", r"\rm", r"\textit", r"\textbf", r"\operatorname"}


def _has(tokens: Sequence[str], names: set[str]) -> bool:
    return any(t in names for t in tokens)


def _operator_with_limits(tokens: Sequence[str]) -> bool:
    return any(t in BIG_OPERATORS and i + 1 < len(tokens) and tokens[i + 1] in ("_", "^", r"\limits")
               for i, t in enumerate(tokens))


STRUCTURES: dict[str, Callable[[Sequence[str]], bool]] = {
    "fraction": lambda t: _has(t, {r"\frac", r"\dfrac", r"\tfrac", r"\over", r"\cfrac"}),
    "big operator with limits": _operator_with_limits,
    "array / matrix": lambda t: any(x.startswith(r"\begin") for x in t) or _has(t, {"&", r"\\"}),
    "accent": lambda t: _has(t, ACCENTS),
    # normalize writes the delimiter into the token: \left( , \right\}
    r"\left … \right": lambda t: any(x.startswith((r"\left", r"\right")) for x in t),
    "spacing command": lambda t: _has(t, SPACING),
    "text / roman": lambda t: _has(t, TEXT),
    "root": lambda t: _has(t, {r"\sqrt"}),
    "prime": lambda t: _has(t, {r"\prime", "'"}),
}
LENGTHS = ((0, 30), (30, 60), (60, 90), (90, 150), (150, 10**9))


def _groups_table(rows: list[tuple[str, str]], groups: dict[str, list[int]], distances: list[float]) -> list[dict]:
    total = sum(distances) or 1.0
    out = []
    for name, members in groups.items():
        if not members:
            continue
        preds, refs = [rows[i][0] for i in members], [rows[i][1] for i in members]
        out.append({"group": name, "images": len(members), "bleu": round(bleu(preds, refs), 4),
                    "edit_distance": round(sum(distances[i] for i in members) / len(members), 4),
                    "share_of_edit_distance": round(sum(distances[i] for i in members) / total, 4),
                    "exact": sum(distances[i] == 0 for i in members)})
    return out


def error_table(rows: list[tuple[str, str]]) -> dict:
    """The tables of the module docstring for (prediction, reference) pairs."""
    preds, refs = [p for p, _ in rows], [r for _, r in rows]
    distances = edit_distances(preds, refs)
    ref_tokens = [latex_tokens(r) for r in refs]
    by_length = {f"{lo}–{hi - 1}" if hi < 10**9 else f"{lo}+":
                 [i for i, t in enumerate(ref_tokens) if lo <= len(t) < hi] for lo, hi in LENGTHS}
    by_structure = {name: [i for i, t in enumerate(ref_tokens) if test(t)] for name, test in STRUCTURES.items()}
    edits: dict[str, Counter[str]] = {"delete": Counter(), "insert": Counter(), "replace": Counter()}
    for pred, ref in zip(preds, ref_tokens, strict=True):
        hyp = latex_tokens(pred)
        for op in Levenshtein.editops(ref, hyp):
            if op.tag == "delete":
                edits["delete"][ref[op.src_pos]] += 1
            elif op.tag == "insert":
                edits["insert"][hyp[op.dest_pos]] += 1
            else:
                edits["replace"][f"{ref[op.src_pos]} → {hyp[op.dest_pos]}"] += 1
    all_edits = sum(sum(c.values()) for c in edits.values()) or 1
    return {
        "images": len(rows), "bleu": round(bleu(preds, refs), 4),
        "edit_distance": round(sum(distances) / max(len(distances), 1), 4),
        "by_length": _groups_table(rows, by_length, distances),
        "by_structure": _groups_table(rows, by_structure, distances),
        "edits": {kind: {"total": sum(c.values()), "share": round(sum(c.values()) / all_edits, 4),
                         "top": c.most_common()} for kind, c in edits.items()},
    }


def _markdown(table: dict, top: int) -> str:
    lines = [f"{table['images']} images: BLEU {table['bleu']:.3f}, edit distance {table['edit_distance']:.3f}", ""]
    for key, title in (("by_length", "reference tokens"), ("by_structure", "structure in the reference")):
        lines += [f"| {title} | images | exact | BLEU | edit distance | share of edit distance |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['group']} | {r['images']} | {r['exact']} | {r['bleu']:.3f} | {r['edit_distance']:.3f} | "
                  f"{100 * r['share_of_edit_distance']:.0f} % |" for r in table[key]]
        lines.append("")
    all_edits = sum(e["total"] for e in table["edits"].values()) or 1
    for kind, title in (("delete", "missed (deleted)"), ("insert", "added (inserted)"),
                        ("replace", "substituted (reference → prediction)")):
        e = table["edits"][kind]
        lines.append(f"**{title}**: {e['total']} edits, {100 * e['share']:.0f} % of all; most frequent: " + ", ".join(
            f"`{tok}` {n} ({100 * n / all_edits:.1f} %)" for tok, n in e["top"][:top]))
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.errors", description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="TSV written by pix2tex.eval --out")
    parser.add_argument("--top", type=int, default=15, help="tokens listed per kind of edit")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of Markdown")
    args = parser.parse_args(argv)
    try:
        rows = list(read_predictions(args.predictions).values())
    except (OSError, KeyError) as exc:
        print(f"error: {args.predictions}: {exc}", file=sys.stderr)
        return 2
    table = error_table(rows)
    if args.json:
        for kind in table["edits"].values():
            kind["top"] = kind["top"][: args.top]
        print(json.dumps(table))
    else:
        print(_markdown(table, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
