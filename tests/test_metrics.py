from __future__ import annotations

import pytest

from pix2tex.metrics import bleu, edit_distance, exact_match, score, token_accuracy


def test_perfect_predictions():
    refs = [r"\frac { a } { b } + c", "x ^ { 2 } = y _ { 1 }"]
    s = score(refs, refs)
    assert s.bleu == pytest.approx(1.0)
    assert s.edit_distance == 0.0
    assert s.token_accuracy == 1.0
    assert s.exact_match == 1.0


def test_metrics_compare_normalized_tokens():
    # Raw and normalized spellings of the same formula are equal for every metric.
    assert exact_match([r"\frac12+x^2"], [r"\frac { 1 } { 2 } + x ^ { 2 }"]) == 1.0
    assert edit_distance([r"\le"], [r"\leq"]) == 0.0


def test_partial_predictions():
    pred, ref = ["a + b + c + d"], ["a + b - c + d"]
    assert edit_distance(pred, ref) == pytest.approx(1 / 7)
    assert token_accuracy(pred, ref) == pytest.approx(6 / 7)
    assert exact_match(pred, ref) == 0.0
    assert 0.0 < bleu(pred, ref) < 1.0


def test_length_mismatch_counts_against_accuracy():
    assert token_accuracy(["a b"], ["a b c d"]) == pytest.approx(0.5)
    assert edit_distance([""], ["a b"]) == 1.0


def test_score_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])
