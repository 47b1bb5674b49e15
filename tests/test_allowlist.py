"""The allow-list in front of TeX: made from real formulas, refusing what builds names or definitions."""

from __future__ import annotations

import pytest

from pix2tex.render import render_images
from pix2tex.render.allowlist import (
    NEVER,
    STANDARD_ENVIRONMENTS,
    STANDARD_OPERATORS,
    allowed_latex,
    build_allowlist,
    check_allowed,
)
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


def test_every_standard_operator_and_environment_is_allowed_and_renders(tmp_path):
    # \sup, \inf, \Pr, \deg... occur in no corpus (im2latex spells them \operatorname*{sup}), yet a
    # user types them: the list must not refuse them, and the renderer's preamble must define them.
    formulas = [f"{op} _ {{ n }} x" for op in STANDARD_OPERATORS]
    formulas += [rf"\begin{{{env}}} a \\ b \end{{{env}}}" for env in ("matrix", "pmatrix", "bmatrix", "cases",
                                                                      "gathered", "aligned")]
    assert all(check_allowed(f) is None for f in formulas)
    assert {f"\\begin{{{env}}}" for env in STANDARD_ENVIRONMENTS} <= allowed_latex()
    results = render_images(formulas, "cm", 100, tmp_path)
    assert [r.formula for r in results if not r.ok] == []


@pytest.mark.parametrize("formula", [
    r"\UseName{gdef}\displaystyle#1${\UseName{mathchar}" + '"7120$}',
    r"\expandafter\def\csname x\endcsname{}",
    r"\begin{\x}", r"\begin {def}\a{\a}\a", r"\ExpandArgs{c}\input{x}", r"\the\catcode",
])
def test_name_builders_and_definitions_are_refused(formula):
    reason = check_allowed(formula)
    assert reason is not None and "allow-list" in reason
