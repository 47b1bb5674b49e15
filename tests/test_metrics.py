from __future__ import annotations

import pytest

from pix2tex.metrics import bleu, edit_distance, exact_match, score, token_accuracy
from tests.helpers import read_formulas


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


def test_bleu_from_summed_statistics_equals_corpus_bleu():
    from pix2tex.metrics import bleu_from_statistics, bleu_statistics

    refs = read_formulas("im2latex_val", 60)
    preds = [" ".join(r.split()[: max(1, len(r.split()) * (k % 4 + 1) // 4)]) for k, r in enumerate(refs)]
    stats = bleu_statistics(preds, refs)
    assert len(stats) == 60 and all(len(row) == 10 for row in stats)
    for part in (slice(None), slice(0, 17), slice(30, 60, 3)):
        rows = stats[part]
        summed = [sum(c) for c in zip(*rows, strict=True)]
        assert bleu_from_statistics(summed) == pytest.approx(bleu(preds[part], refs[part]), abs=1e-12)
