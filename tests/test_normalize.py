from __future__ import annotations

import numpy as np
import pytest

from pix2tex.normalize import latex_tokens, normalize, tokenize
from tests.helpers import SHARED, read_formulas


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
    # Old-style font switches fold into the math alphabet they select, to the end of their group.
    (r"{\cal L} + {a \bf b c} d", r"\mathcal { L } + { a \mathbf { b c } } d"),
    (r"\rm d x", r"\mathrm { d x }"),
    (r"x^{\bf V}", r"x ^ { \mathbf { V } }"),
    (r"\mbox{\bf ab}", r"\mbox { \bf a b }"),                 # text mode: a text switch
    (r"\tilde{\cal H}", r"\tilde { \cal H }"),                # accented: typesets otherwise
    (r"\left( \bf x \right)", r"\left( \bf x \right)"),    # the scope ends at \right
    (r"\begin{array}{c} \bf a & b \end{array}", r"\begin{array} { c } \bf a & b \end{array}"),
    # Braces around one ordinary atom go, unless they matter to TeX.
    (r"{\bar x} + {x}^2 + {\alpha}", r"\bar { x } + x ^ { 2 } + \alpha"),
    (r"{\bar x}^2 + {\cal L}_1", r"{ \bar { x } } ^ { 2 } + { \mathcal { L } } _ { 1 }"),  # scripts sit otherwise
    (r"{,} + {\sum} + {-}", r"{ , } + { \sum } + { - }"),       # the braces change the spacing
    (r"\widehat{{\beta}} \frac{a}{b}{c}", r"\widehat { { \beta } } \frac { a } { b } { c }"),
    (r"\left( {x} \right) \sqrt[3]{x}", r"\left( x \right) \sqrt [ 3 ] { x }"),
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
    # im2latex-100k labels come from im2markup; ours differ by braces around every argument,
    # folded synonyms (\to -> \rightarrow) and font switches ({\cal L} -> \mathcal { L }), and by
    # braces dropped around one atom ({ \bar { x } } -> \bar { x }): about a quarter of them.
    formulas = read_formulas("im2latex_val", 2000)
    same = sum(normalize(f) == " ".join(f.split()) for f in formulas)
    assert 0.7 < same / len(formulas) < 0.85


def test_normalized_formulas_typeset_like_the_originals():
    # The rules that rewrite more than spelling (font switches, dropped braces) are checked with
    # real TeX: im2latex labels that use them render to the same pixels before and after.
    from pix2tex.normalize import _SYNONYMS  # folded synonyms are other glyphs (\dag is text's dagger)
    from pix2tex.render import render_images

    formulas = [f for f in read_formulas("im2latex_val")
                if normalize(f) != " ".join(f.split()) and not set(f.split()) & set(_SYNONYMS)][:300]
    # Real formulas in which a less careful rule changed pixels: a scripted font-switched letter in
    # a fraction, switches in accents and in a text accent (\d), braces inside accents and \boldsymbol.
    formulas += [next(f for f in read_formulas(corpus) if key in f) for corpus, key in [
        ("im2latex_val", r"{ 2 { \bf P } ^ { 2 } }"), ("im2latex_val", r"\bar { \tilde { \cal H } } ^ { j }"),
        ("im2latex_val", r"\d { \cal V } _ { A }"), ("im2latex170k_arxiv2018", r"\widehat { { \beta } }"),
        ("arxiv_display_math", r"\boldsymbol { { W } } _ { 1 }")]]
    normalized = [normalize(f) for f in formulas]
    pairs = zip(formulas, normalized, strict=True)
    assert sum(r"\math" in n and r"\math" not in f for f, n in pairs) > 100  # switches folded
    before, after = render_images(formulas), render_images(normalized)
    compared = 0
    for f, a, b in zip(formulas, before, after, strict=True):
        if a.image is None:
            continue  # the raw label is refused (an allow-list miss such as \rm); its normal form is checked below
        assert b.image is not None and np.array_equal(np.asarray(a.image), np.asarray(b.image)), f
        compared += 1
    assert compared > 250
    assert all(b.image is not None for b in after)


def _same_pixels(pairs: list[tuple[str, str]]) -> list[bool | None]:
    """Per (a, b): whether TeX draws both alike (None where either is refused)."""
    from pix2tex.render import render_images

    images = render_images([x for pair in pairs for x in pair])
    return [None if a.image is None or b.image is None else np.array_equal(np.asarray(a.image), np.asarray(b.image))
            for a, b in zip(images[::2], images[1::2], strict=True)]


def _assert_normal_forms(cases: dict[str, str]) -> None:
    """Each raw formula normalizes to its expected form, which is normal, and TeX draws both alike."""
    for raw, expected in cases.items():
        assert normalize(raw) == expected and normalize(expected) == expected
    assert _same_pixels(list(cases.items())) == [True] * len(cases)


def test_named_operators_have_one_spelling_that_typesets_alike():
    """im2latex and arXiv write \\operatorname{sin} and \\operatorname*{max}, school formulas \\sin
    and \\max: one normal form (the command) for what TeX draws alike; a star where the operator
    takes none, and a name LaTeX does not define, stay as written."""
    cases = {
        r"\operatorname{sin}^2x": r"\sin ^ { 2 } x", r"\operatorname { l o g } x": r"\log x",
        r"\operatorname*{max}_{i} x_i": r"\max _ { i } x _ { i }",
        r"\operatorname*{lim\,sup}_n a": r"\limsup _ { n } a",
        r"\displaystyle\operatorname*{sup}_{x>0} f": r"\displaystyle \sup _ { x > 0 } f",
        r"\operatorname{arctan}(y)": r"\arctan ( y )",
    }
    _assert_normal_forms(cases)
    kept = [r"\operatorname { m a x } _ { i } x", r"\operatorname * { s i n } x", r"\operatorname { t r } A"]
    assert [normalize(f) for f in kept] == kept
    assert _same_pixels([(kept[0], r"\max _ { i } x")]) == [False]  # without the star: limits beside, not below


def test_row_breaks_have_one_normal_form_that_typesets_as_written():
    """``\\*`` loses its star (it only forbids a page break); ``\\[2pt]`` stays one token, its length
    without spaces; brackets after a spaced ``\\`` are content; a bracket that is not a length is
    not glued (so what is inside is still checked)."""
    cases = {
        r"\begin{gathered} a \\* b \end{gathered}": r"\begin{gathered} a \\ b \end{gathered}",
        r"\begin{aligned} a &= b \\[ 2 pt ] c \end{aligned}": r"\begin{aligned} a & = b \\[2pt] c \end{aligned}",
        r"\begin{pmatrix} a \\*[-.5em] b \end{pmatrix}": r"\begin{pmatrix} a \\[-.5em] b \end{pmatrix}",
        r"\begin{array}{cc} a & b \\[4mm] c & d \end{array}": r"\begin{array} { c c } a & b \\[4mm] c & d \end{array}",
        r"\begin{cases} a & x \\ [y] & z \end{cases}": r"\begin{cases} a & x \\ [ y ] & z \end{cases}",
    }
    _assert_normal_forms(cases)
    assert tokenize(r"a \\[\input{x}] b")[:3] == ["a", "\\\\", "["]


def test_multiline_environments_round_trip_to_the_same_pixels():
    """Seeded multi-line arXiv formulas (aligned, gathered, cases, arrays, matrices) without text-mode
    arguments (whose words the normal form spells letter by letter, as im2latex's labels do) render
    to the same pixels as their normal forms."""
    import random

    lines = [line for line in (SHARED / "multiline" / "arxiv_multiline.txt").read_text().splitlines() if line.strip()]
    picked = [lines[i] for i in sorted(random.Random(0).sample(range(len(lines)), 300))]
    plain = [f for f in picked if not any(w in f for w in (r"\text", r"\mbox", r"\hbox"))]
    same = _same_pixels([(f, normalize(f)) for f in plain])
    compared = [s for s in same if s is not None]
    assert len(compared) > 200
    assert sum(compared) >= 0.99 * len(compared), [f for f, s in zip(plain, same, strict=True) if s is False][:3]


def test_latex_tokens_match_normalized_string():
    f = r"\frac{a}{b} + \sqrt{x}"
    assert latex_tokens(f) == normalize(f).split(" ")


def test_deeply_nested_input_does_not_crash_and_is_refused_by_the_renderer():
    from pix2tex.render import check_formula

    hostile = "x\\iffalse" + "{" * 500 + "}" * 500 + "\\fi"
    out = normalize(hostile)  # no RecursionError
    assert out.startswith("x \\iffalse { {") and normalize(out) == out
    assert check_formula(hostile) == "groups nested deeper than 64 levels"
    assert check_formula("{" * 16 + "x" + "}" * 16) is None  # the deepest real formulas nest 16 levels
