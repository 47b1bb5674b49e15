"""The allow-list in front of TeX: made from real formulas, refusing what builds names or definitions."""

from __future__ import annotations

import pytest

from pix2tex.render.allowlist import NEVER, allowed_latex, build_allowlist, check_allowed
from tests.helpers import read_formulas


def test_built_list_keeps_used_commands_and_never_the_dangerous_ones():
    allowed, refused = build_allowlist([r"\frac{a}{b} \alpha", r"\gdef\x{1} \x", r"\csname foo\endcsname"])
    assert r"\frac" in allowed and r"\alpha" in allowed and r"\begin{pmatrix}" in allowed
    assert r"\gdef" not in allowed and r"\csname" not in allowed and r"\x" in allowed
    assert refused == {r"\gdef": 1, r"\csname": 1, r"\endcsname": 1}
    assert not NEVER & allowed_latex()


@pytest.mark.parametrize("corpus", ["im2latex_val", "arxiv_display_math", "k12_exam", "hme100k", "chem_units",
                                    "im2latex170k_arxiv2018"])
def test_real_formulas_pass(corpus):
    formulas = read_formulas(corpus, 3000, start=1000)
    refused = [f for f in formulas if check_allowed(f) is not None]
    assert len(refused) <= 0.005 * len(formulas), refused[:5]


@pytest.mark.parametrize("formula", [
    r"\UseName{gdef}\displaystyle#1${\UseName{mathchar}" + '"7120$}',
    r"\expandafter\def\csname x\endcsname{}",
    r"\begin{\x}", r"\begin {def}\a{\a}\a", r"\ExpandArgs{c}\input{x}", r"\the\catcode",
])
def test_name_builders_and_definitions_are_refused(formula):
    reason = check_allowed(formula)
    assert reason is not None and "allow-list" in reason
