"""Per-sample evaluation records, rendered-image scores, breakdowns and a self-contained HTML report.

Used by ``python -m pix2tex.eval … --render [--report DIR]``.  Every record is one prediction with
its reference; :func:`render_records` renders both with the project's sandboxed renderer (Computer
Modern, 100 dpi for both, many formulas per TeX run) and adds the image metrics of
:mod:`pix2tex.image_metrics`; :func:`summarize` and :func:`breakdowns` aggregate; :func:`write_report`
writes ``index.html`` with every image inlined (no request to any other file or host).
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rapidfuzz.distance import Levenshtein

from pix2tex.fileio import atomic_write_text
from pix2tex.image_metrics import compare_rendered
from pix2tex.metrics import bleu, exact_match
from pix2tex.normalize import latex_tokens

__all__ = ["Record", "make_records", "render_records", "summarize", "breakdowns", "write_report",
           "LENGTH_BUCKETS"]

LENGTH_BUCKETS = ((0, 20, "<= 20"), (21, 50, "21-50"), (51, 100, "51-100"), (101, math.inf, "> 100"))
_MATRIX_ENVIRONMENTS = ("array", "matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "smallmatrix",
                        "cases", "aligned", "gathered", "split", "tabular")
RENDER_CHUNK = 32  # formulas per TeX run: a prediction that does not compile costs one re-run of its chunk


@dataclass
class Record:
    image: str
    prediction: str
    reference: str
    corpus: str
    ref_tokens: int
    has_matrix: bool
    token_edit: float
    compiled: bool | None = None  # None until rendered; also None when the reference does not render
    reason: str = ""  # why the prediction did not render
    exact: bool | None = None
    exact_no_ws: bool | None = None
    image_edit: float | None = None
    images: dict = field(default_factory=dict, repr=False)  # rendered arrays, for the report only


def _corpus(path: str) -> str:
    p = Path(path)
    return p.parent.parent.name if p.parent.name == "images" else p.parent.name


def make_records(rows: Sequence[tuple[str, str, str]]) -> list[Record]:
    """(image, prediction, reference) rows as records with token-level facts."""
    out = []
    for image, pred, ref in rows:
        ref_tok, pred_tok = latex_tokens(ref), latex_tokens(pred)
        matrix = any(t in (f"\\begin{{{e}}}" for e in _MATRIX_ENVIRONMENTS) for t in ref_tok)
        out.append(Record(image, pred, ref, _corpus(image), len(ref_tok), matrix,
                          Levenshtein.normalized_distance(pred_tok, ref_tok)))
    return out


def _render_all(formulas: Sequence[str], workdir: Path | None) -> list[tuple[np.ndarray | None, str]]:
    from pix2tex.render import render_images

    out: list[tuple[np.ndarray | None, str]] = []
    for lo in range(0, len(formulas), RENDER_CHUNK):
        for r in render_images(formulas[lo : lo + RENDER_CHUNK], font="cm", dpi=100, workdir=workdir):
            out.append((np.asarray(r.image), "") if r.image is not None else (None, r.error or "did not render"))
    return out


def render_records(records: list[Record], workdir: Path | None = None, keep_images: bool = False) -> float:
    """Render every prediction and reference and score the pairs; returns the seconds it took."""
    start = time.perf_counter()
    preds = _render_all([r.prediction if r.prediction.strip() else "{}" for r in records], workdir)
    refs = _render_all([r.reference for r in records], workdir)
    for rec, (pred_img, reason), (ref_img, _) in zip(records, preds, refs, strict=True):
        if ref_img is None:
            continue  # the reference itself does not render: not scored on images
        cmp = compare_rendered(pred_img if rec.prediction.strip() else None, ref_img)
        rec.compiled, rec.exact, rec.exact_no_ws, rec.image_edit = cmp.compiled, cmp.exact, cmp.exact_no_ws, \
            cmp.edit_distance
        rec.reason = "" if cmp.compiled else (reason or "empty prediction")
        if keep_images:
            rec.images = {"prediction": pred_img, "reference": ref_img}
    return time.perf_counter() - start


def summarize(records: Sequence[Record]) -> dict:
    """Token and rendered scores of a group of records (rendered ones: those whose reference rendered)."""
    out = {"n": len(records)}
    if not records:
        return out
    out["bleu"] = round(bleu([r.prediction for r in records], [r.reference for r in records]), 4)
    out["edit_distance"] = round(sum(r.token_edit for r in records) / len(records), 4)
    out["exact_match"] = round(exact_match([r.prediction for r in records], [r.reference for r in records]), 4)
    scored = [r for r in records if r.compiled is not None]
    if scored:
        out.update({
            "n_rendered": len(scored),
            "rendered_exact_match": round(sum(r.exact for r in scored) / len(scored), 4),
            "rendered_exact_match_no_ws": round(sum(r.exact_no_ws for r in scored) / len(scored), 4),
            "rendered_edit_distance": round(sum(r.image_edit for r in scored) / len(scored), 4),
            "does_not_compile": round(sum(not r.compiled for r in scored) / len(scored), 4),
        })
    return out


def breakdowns(records: Sequence[Record]) -> dict[str, dict[str, dict]]:
    """Scores by reference length, by corpus and by whether the reference has a matrix/array."""
    by_length = {label: summarize([r for r in records if lo <= r.ref_tokens <= hi])
                 for lo, hi, label in LENGTH_BUCKETS}
    corpora = sorted({r.corpus for r in records})
    by_corpus = {c: summarize([r for r in records if r.corpus == c]) for c in corpora}
    by_matrix = {"matrix/array": summarize([r for r in records if r.has_matrix]),
                 "no matrix/array": summarize([r for r in records if not r.has_matrix])}
    return {"reference length (tokens)": by_length, "corpus": by_corpus, "matrix or array": by_matrix}


def record_row(rec: Record) -> dict:
    """A record as plain data (JSON/TSV), without its images."""
    row = asdict(rec)
    row.pop("images")
    return row


# -- HTML report ------------------------------------------------------------------------------------

def _png_data(array: np.ndarray | None = None, path: str | None = None) -> str | None:
    try:
        img = Image.fromarray(array) if array is not None else Image.open(path).convert("L")
    except (OSError, ValueError, TypeError):
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">' if src else f"<em>{html.escape(alt)}</em>"


def _table(rows: dict[str, dict]) -> str:
    keys = ["n", "bleu", "edit_distance", "exact_match", "rendered_exact_match", "rendered_exact_match_no_ws",
            "rendered_edit_distance", "does_not_compile"]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["", *keys])
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td>{html.escape(str(scores.get(k, '')))}</td>" for k in keys) + "</tr>" for name, scores in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def _length_plot(records: Sequence[Record]) -> str | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.scatter([r.ref_tokens for r in records], [r.token_edit for r in records], s=6, alpha=0.5, label="tokens")
    scored = [r for r in records if r.image_edit is not None]
    if scored:
        ax.scatter([r.ref_tokens for r in scored], [r.image_edit for r in scored], s=6, alpha=0.5,
                   label="rendered columns")
    ax.set_xlabel("reference length (normalized tokens)")
    ax.set_ylabel("normalized edit distance")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(folder: str | Path, records: Sequence[Record], summary: dict, parts: dict, title: str,
                 worst: int = 50) -> Path:
    """``folder/index.html``: summary, breakdowns, a plot and the worst cases, all inline."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda r: r.image_edit) if any(r.image_edit is not None for r in records) else (lambda r: r.token_edit)
    ranked = sorted(records, key=lambda r: -(key(r) if key(r) is not None else -1))[:worst]
    cases = []
    for r in ranked:
        pred = r.images.get("prediction")
        ref = r.images.get("reference")
        cases.append(
            "<tr>"
            f"<td>{_img(_png_data(path=r.image), 'input image')}"
            f"<br><small>{html.escape(Path(r.image).name)}</small></td>"
            f"<td>{_img(_png_data(pred) if pred is not None else None, r.reason or 'not rendered')}"
            f"<pre>{html.escape(r.prediction)}</pre></td>"
            f"<td>{_img(_png_data(ref) if ref is not None else None, 'reference not rendered')}"
            f"<pre>{html.escape(r.reference)}</pre></td>"
            f"<td>{r.token_edit:.3f}</td><td>{'' if r.image_edit is None else f'{r.image_edit:.3f}'}</td>"
            "</tr>")
    plot = _length_plot(records)
    sections = "".join(f"<h2>By {html.escape(name)}</h2>{_table(rows)}" for name, rows in parts.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
pre{{white-space:pre-wrap;max-width:28em;max-height:16em;overflow:auto;font-size:12px}}img{{max-width:28em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2>{_table({"all": summary})}
{sections}
<h2>Edit distance against formula length</h2>{_img(plot, "matplotlib is not installed: no plot")}
<h2>The {len(ranked)} worst cases</h2>
<table><tr><th>input</th><th>prediction (rendered)</th><th>reference (rendered)</th><th>token edit</th>
<th>image edit</th></tr>{''.join(cases)}</table>
</body></html>
"""
    path = folder / "index.html"
    atomic_write_text(path, page)
    return path
