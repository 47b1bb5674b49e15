from __future__ import annotations

import numpy as np
import pytest

from pix2tex.normalize import normalize
from pix2tex.tokenizer import BOS_ID, EOS_ID, PAD_ID, LatexTokenizer, TokenizerError
from tests.helpers import read_formulas


@pytest.fixture(scope="module")
def formulas():
    return [normalize(f) for f in read_formulas("im2latex_val", 3000)]


@pytest.fixture(scope="module")
def tokenizer(formulas):
    return LatexTokenizer.train(formulas, 1000)


def test_special_ids_and_size(tokenizer):
    assert tokenizer.vocab_size == 1000
    assert [tokenizer.hf.token_to_id(t) for t in ("[PAD]", "[BOS]", "[EOS]")] == [PAD_ID, BOS_ID, EOS_ID]


def test_round_trip_is_exact(tokenizer):
    held_out = [normalize(f) for f in read_formulas("im2latex_val", 300, start=5000)]
    ids, mask = tokenizer.encode(held_out)
    assert tokenizer.decode(ids) == held_out
    assert (ids[:, 0] == BOS_ID).all()
    assert mask.sum(1).tolist() == tokenizer.lengths(held_out)


def test_merges_shorten_sequences(tokenizer, formulas):
    sample = formulas[:500]
    ids = sum(tokenizer.lengths(sample)) - 2 * len(sample)
    tokens = sum(len(f.split(" ")) for f in sample)
    assert ids < 0.7 * tokens


def test_truncation_keeps_bos_and_drops_eos(tokenizer, formulas):
    ids, _ = tokenizer.encode([formulas[0]], max_len=5)
    assert ids.shape == (1, 5) and ids[0, 0] == BOS_ID and EOS_ID not in ids[0].tolist()


def test_save_load(tmp_path, tokenizer, formulas):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    again = LatexTokenizer.load(path)
    assert np.array_equal(again.encode(formulas[:5])[0], tokenizer.encode(formulas[:5])[0])


def test_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        LatexTokenizer.load(tmp_path / "missing.json")
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a tokenizer.json file"):
        LatexTokenizer.load(junk)


def test_foreign_special_ids_are_refused(tmp_path, formulas):
    from tokenizers import Tokenizer, models, trainers

    hf = Tokenizer(models.BPE(unk_token="[UNK]"))
    hf.train_from_iterator(formulas[:100], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["[BOS]", "[PAD]", "[EOS]", "[UNK]"], show_progress=False))
    path = tmp_path / "foreign.json"
    path.write_text(hf.to_str())
    with pytest.raises(TokenizerError, match=r"\[PAD\] at id 1, expected 0"):
        LatexTokenizer.load(path)


@pytest.fixture(scope="module")
def word_tokenizer(formulas):
    return LatexTokenizer.train(formulas, 2000, kind="tokens")


def test_token_vocabulary_has_one_id_per_latex_token(word_tokenizer, formulas):
    assert word_tokenizer.kind == "tokens"
    sample = formulas[:300]
    # Every LaTeX token is its own id (no merges), BOS and EOS included in lengths().
    assert word_tokenizer.lengths(sample) == [len(f.split(" ")) + 2 for f in sample]
    assert word_tokenizer.vocab_size < 1000  # a few hundred symbols, not thousands of merges


def test_token_vocabulary_round_trip_and_reload(word_tokenizer, tmp_path):
    held_out = [normalize(f) for f in read_formulas("im2latex_val", 300, start=5000)]
    known = set(word_tokenizer.hf.get_vocab())
    covered = [f for f in held_out if set(f.split(" ")) <= known]
    assert len(covered) > 250  # the training formulas' symbols cover held-out formulas
    ids, _ = word_tokenizer.encode(covered)
    assert word_tokenizer.decode(ids) == covered
    word_tokenizer.save(tmp_path / "tokens.json")
    again = LatexTokenizer.load(tmp_path / "tokens.json")
    assert again.kind == "tokens" and again.decode(again.encode(covered)[0]) == covered


def test_unknown_kind_is_refused(formulas):
    with pytest.raises(TokenizerError, match="kind"):
        LatexTokenizer.train(formulas[:10], 100, kind="chars")
