from __future__ import annotations

import pytest

from pix2tex.normalize import latex_tokens, normalize, tokenize
from tests.helpers import read_formulas


@pytest.mark.parametrize("raw, expected", [
    ("x^2", "x ^ { 2 }"),
    (r"\frac12", r"\frac { 1 } { 2 }"),
    (r"\frac{12}{3}", r"\frac { 1 2 } { 3 }"),
    (r"x_1^\alpha", r"x _ { 1 } ^ { \alpha }"),
    (r"\sqrt[3]x", r"\sqrt [ 3 ] { x }"),
    (r"x^\frac12", r"x ^ { \frac { 1 } { 2 } }"),
    (r"\mathrm e^{i\pi}", r"\mathrm { e } ^ { i \pi }"),
    (r"\begin {array}{cc} a & b \\ c & d \end{ array }", r"\begin{array} { c c } a & b \\ c & d \end{array}"),
    (r"\hspace{1 cm}x", r"\hspace { 1cm } x"),
    (r"a \le b \to c", r"a \leq b \rightarrow c"),
    (r"\alpha b", r"\alpha b"),
    (r"\alphab", r"\alphab"),
    ("50\\% % comment", r"5 0 \%"),
    ("", ""),
])
def test_normalize_examples(raw, expected):
    assert normalize(raw) == expected


def test_control_space_survives():
    assert tokenize(r"a\ b") == ["a", "\\ ", "b"]
    assert normalize(r"a\ b") == "a \\ b"
    assert tokenize(normalize(r"a\ b")) == ["a", "\\ ", "b"]
    assert normalize(r"\ a\ ") == "\\ a"


def test_unbalanced_input_does_not_crash():
    assert normalize("{a") == "{ a"
    assert normalize("a}}") == "a } }"
    assert normalize("x^") == "x ^"


@pytest.mark.parametrize("corpus", ["im2latex_val", "k12_exam", "hme100k", "chem_units"])
def test_idempotent_on_real_formulas(corpus):
    for formula in read_formulas(corpus, 3000):
        once = normalize(formula)
        assert normalize(once) == once, formula


def test_im2latex_labels_are_mostly_normal_already():
    # im2latex-100k labels come from im2markup; ours differ only by braces around every
    # argument and by folded synonyms (\to -> \rightarrow), which touch under 10 % of formulas.
    formulas = read_formulas("im2latex_val", 2000)
    same = sum(normalize(f) == " ".join(f.split()) for f in formulas)
    assert same / len(formulas) > 0.9


def test_latex_tokens_match_normalized_string():
    f = r"\frac{a}{b} + \sqrt{x}"
    assert latex_tokens(f) == normalize(f).split(" ")


def test_deeply_nested_input_does_not_crash_and_is_refused_by_the_renderer():
    from pix2tex.dataset.render import check_formula

    hostile = "x\\iffalse" + "{" * 500 + "}" * 500 + "\\fi"
    out = normalize(hostile)  # no RecursionError
    assert out.startswith("x \\iffalse { {") and normalize(out) == out
    assert check_formula(hostile) == "groups nested deeper than 64 levels"
    assert check_formula("{" * 16 + "x" + "}" * 16) is None  # the deepest real formulas nest 16 levels
