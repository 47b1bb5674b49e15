"""Rendered-image metrics: pure functions on hand-made images, and real TeX on real formulas."""

from __future__ import annotations

import numpy as np
import pytest

from pix2tex.image_metrics import (
    binarize,
    column_edit_distance,
    compare_rendered,
    drop_blank_columns,
    image_exact_match,
    image_exact_match_no_ws,
)
from pix2tex.render import render_images
from pix2tex.report import breakdowns, make_records, render_records, summarize
from tests.helpers import read_formulas

pytestmark = [pytest.mark.tex]


def _canvas(*blocks, width=40, height=12):
    """White image with black rectangles (x0, x1) across rows 2..9."""
    img = np.full((height, width), 255, np.uint8)
    for x0, x1 in blocks:
        img[2:10, x0:x1] = 0
    return img


def test_equal_images_and_margins():
    a = _canvas((5, 10), (14, 20))
    b = np.pad(a, 7, constant_values=255)  # more white margin: cropping removes it
    assert binarize(a).shape == (8, 15)
    assert image_exact_match(a, b) and image_exact_match_no_ws(a, b) and column_edit_distance(a, b) == 0.0


def test_spacing_only_difference_counts_only_with_whitespace():
    a, b = _canvas((5, 10), (14, 20)), _canvas((5, 10), (17, 23))  # the gap is 3 columns wider
    assert not image_exact_match(a, b)
    assert image_exact_match_no_ws(a, b)
    assert 0 < column_edit_distance(a, b) <= 3 / 18
    assert drop_blank_columns(binarize(b)).shape == (8, 11)


def test_different_images_and_non_compiling_predictions():
    a, b = _canvas((5, 10)), _canvas((5, 6), (20, 38))
    assert column_edit_distance(a, b) > 0.5
    assert compare_rendered(None, a).compiled is False and compare_rendered(None, a).edit_distance == 1.0
    blank = np.full((5, 5), 255, np.uint8)
    assert column_edit_distance(blank, blank) == 0.0 and column_edit_distance(blank, a) == 1.0


def test_synonyms_render_identically_but_differ_in_tokens():
    records = make_records([("x.png", r"a \le b", r"a \leq b"), ("y.png", r"{\frac a b}", r"\frac{a}{b}"),
                            ("z.png", r"\frac{a}{b", r"\frac{a}{b}"), ("w.png", "x+y", r"x\,+\,y")])
    render_records(records)
    assert records[0].exact and records[0].token_edit == 0.0  # the normalizer folds \le already
    assert records[1].exact and records[1].token_edit > 0  # different tokens, same picture
    assert records[2].compiled is False and records[2].reason == "unbalanced braces"
    assert not records[3].exact and records[3].exact_no_ws  # only the thin spaces differ
    summary = summarize(records)
    assert summary["rendered_exact_match"] == 0.5 and summary["does_not_compile"] == 0.25


def test_real_formulas_match_themselves_and_not_each_other():
    formulas = read_formulas("im2latex_val", 4, start=100)
    images = [np.asarray(r.image) for r in render_images(formulas, dpi=100)]
    assert all(image_exact_match(x, x) for x in images)
    assert all(column_edit_distance(images[i], images[i + 1]) > 0.3 for i in range(3))


def test_breakdowns_split_by_length_corpus_and_matrix():
    rows = [("c/images/1.png", "x", "x"), ("c/images/2.png", "y", r"\begin{array}{c} y \end{array}"),
            ("d/images/3.png", "z", " ".join(["z"] * 60))]
    parts = breakdowns(make_records(rows))
    by_length = parts["reference length (tokens)"]
    assert by_length["<= 20"]["n"] == 2 and by_length["51-100"]["n"] == 1
    assert set(parts["corpus"]) == {"c", "d"} and parts["matrix or array"]["matrix/array"]["n"] == 1


def test_eval_report_is_self_contained(tmp_path):
    import json
    import re
    import subprocess
    import sys

    from tests.helpers import REPO, SAMPLE

    result = subprocess.run(
        [sys.executable, "-m", "pix2tex.eval", "--images", str(SAMPLE), "--labels", str(SAMPLE / "labels.tsv"),
         "--limit", "6", "--report", str(tmp_path / "report"), "--out", str(tmp_path / "pred.tsv"), "--json"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["n"] == 6 and scores["n_rendered"] == 6 and 0 <= scores["does_not_compile"] <= 1
    assert set(scores["breakdowns"]) == {"reference length (tokens)", "corpus", "matrix or array"}
    page = (tmp_path / "report" / "index.html").read_text()
    # Every image is inline; nothing points to another file or host.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count("data:image/png;base64,") >= 6 + 6  # inputs and rendered references at least
    header = (tmp_path / "pred.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["image", "prediction", "reference"] and "image_edit" in header
