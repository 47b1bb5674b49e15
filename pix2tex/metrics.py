"""Evaluation metrics on normalized LaTeX tokens (pure functions).

All metrics compare token sequences from :func:`pix2tex.normalize.latex_tokens`, so they do not
depend on the BPE vocabulary and predictions of different models are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rapidfuzz.distance import Levenshtein

from pix2tex.normalize import latex_tokens

__all__ = ["Scores", "bleu", "bleu_statistics", "bleu_from_statistics", "edit_distance",
           "edit_distances", "token_accuracy", "exact_match", "score"]


def _sacrebleu():
    """sacrebleu, which only BLEU needs: the light install (reading only) leaves it out."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("BLEU needs sacrebleu: pip install 'pix2tex[train]'") from None
    return sacrebleu


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return [latex_tokens(t) for t in texts]


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 in [0, 1] over normalized LaTeX tokens (sacrebleu, no re-tokenization)."""
    if not predictions:
        return 0.0
    hyp = [" ".join(t) for t in _tokens(predictions)]
    ref = [" ".join(t) for t in _tokens(references)]
    return _sacrebleu().corpus_bleu(hyp, [ref], tokenize="none", force=True).score / 100.0


def bleu_statistics(predictions: Sequence[str], references: Sequence[str]) -> list[list[int]]:
    """Per-sentence BLEU counts (lengths, n-gram matches and totals) of normalized LaTeX tokens.

    Corpus BLEU is a function of their sums (:func:`bleu_from_statistics`), so a bootstrap over
    sentences resamples these rows instead of re-running BLEU on every resample.
    """
    hyp = [" ".join(t) for t in _tokens(predictions)]
    ref = [" ".join(t) for t in _tokens(references)]
    metric = _sacrebleu().BLEU(tokenize="none", force=True)
    # sacrebleu's own per-segment statistics: [hyp_len, ref_len, matches_1..4, totals_1..4]
    return [list(map(int, row)) for row in metric._extract_corpus_statistics(hyp, [ref])]


def bleu_from_statistics(total: Sequence[int]) -> float:
    """Corpus BLEU in [0, 1] from the column sums of :func:`bleu_statistics` (as :func:`bleu`)."""
    hyp_len, ref_len = total[0], total[1]
    return _sacrebleu().BLEU.compute_bleu(list(total[2:6]), list(total[6:10]), hyp_len, ref_len,
                                       smooth_method="exp").score / 100.0


def edit_distances(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Each pair's token-level Levenshtein distance, normalized by the longer sequence (0 = equal)."""
    pairs = zip(_tokens(predictions), _tokens(references), strict=True)
    return [Levenshtein.normalized_distance(p, r) for p, r in pairs]


def edit_distance(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of :func:`edit_distances`."""
    distances = edit_distances(predictions, references)
    return sum(distances) / len(distances) if distances else 0.0


def token_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of reference positions whose token the prediction matches at the same position.

    Counted over the whole corpus: matches / sum(max(len(pred), len(ref))), so both missing and
    extra tokens lower the score.
    """
    matches = total = 0
    for p, r in zip(_tokens(predictions), _tokens(references), strict=True):
        # positions past the shorter sequence count as misses (total below is the longer length)
        matches += sum(a == b for a, b in zip(p, r, strict=False))
        total += max(len(p), len(r))
    return matches / total if total else 1.0


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions whose normalized tokens equal the reference's."""
    pairs = list(zip(_tokens(predictions), _tokens(references), strict=True))
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 0.0


@dataclass(frozen=True)
class Scores:
    bleu: float
    edit_distance: float
    token_accuracy: float
    exact_match: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"BLEU {self.bleu:.4f}  edit distance {self.edit_distance:.4f}  "
                f"token accuracy {self.token_accuracy:.4f}  exact match {self.exact_match:.4f}  (n={self.n})")


def score(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return Scores(bleu(predictions, references), edit_distance(predictions, references),
                  token_accuracy(predictions, references), exact_match(predictions, references),
                  len(predictions))
