"""Tokenizers over normalized LaTeX; the only owner of the special token ids.

Two kinds, both Hugging Face ``tokenizers`` models saved as one tokenizer.json:

* ``bpe``: normalized formulas are token sequences separated by single spaces (see
  :mod:`pix2tex.normalize`); a Metaspace pre-tokenizer turns those spaces into a visible marker
  *without* splitting on them, so merges may span several LaTeX tokens (``_ { 1 }`` can become
  one id).  Sequences are short, which makes autoregressive decoding fast.
* ``tokens``: one id per LaTeX token (a word-level vocabulary of the few hundred symbols the
  training formulas use).  Sequences are longer, but every id is one visible symbol or
  structure, which is easier to learn to read from an image.

Decoding is the exact inverse of encoding for both (tokens the vocabulary lacks become [UNK]).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pix2tex.fileio import atomic_write_text
from pix2tex.normalize import normalize

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

__all__ = [
    "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SPECIAL_TOKENS",
    "LatexTokenizer", "TokenizerError",
]


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable or does not use this project's special ids."""


def _metaspace() -> pre_tokenizers.Metaspace:
    return pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)


class LatexTokenizer:
    """Encode normalized LaTeX to ids framed by BOS/EOS, and decode ids back to LaTeX."""

    def __init__(self, tokenizer: Tokenizer):
        for name, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True):
            if tokenizer.token_to_id(name) != expected:
                raise TokenizerError(f"tokenizer has {name} at id {tokenizer.token_to_id(name)}, expected {expected}")
        self.hf = tokenizer

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, formulas: Iterable[str], vocab_size: int, kind: str = "bpe",
              min_frequency: int = 2) -> LatexTokenizer:
        """Train a vocabulary of at most ``vocab_size`` ids on normalized formulas.

        ``kind`` is ``"bpe"`` or ``"tokens"`` (see the module docstring); a ``tokens`` vocabulary
        keeps the LaTeX tokens seen at least ``min_frequency`` times, most frequent first.
        """
        if vocab_size <= len(SPECIAL_TOKENS):
            raise TokenizerError(f"vocab size {vocab_size} leaves no room next to the special tokens")
        if kind == "tokens":
            return cls._train_words(formulas, vocab_size, min_frequency)
        if kind != "bpe":
            raise TokenizerError(f"tokenizer kind must be 'bpe' or 'tokens', got {kind!r}")
        hf = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        hf.pre_tokenizer = _metaspace()
        hf.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
            # A merge may not create tokens longer than this; bounds the vocabulary's strings.
            max_token_length=24,
        )
        hf.train_from_iterator((f for f in formulas if f), trainer=trainer)
        return cls(hf)

    @classmethod
    def _train_words(cls, formulas: Iterable[str], vocab_size: int, min_frequency: int) -> LatexTokenizer:
        hf = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # Without a decoder, tokenizers joins word-level tokens with single spaces: the normalized form.
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
        hf.train_from_iterator((f for f in formulas if f), trainer=trainer)
        return cls(hf)

    @property
    def kind(self) -> str:
        """``"bpe"`` or ``"tokens"``."""
        return "tokens" if isinstance(self.hf.model, models.WordLevel) else "bpe"

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatexTokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            hf = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
            raise TokenizerError(f"{path}: not a tokenizer.json file ({exc})") from None
        return cls(hf)

    @classmethod
    def from_str(cls, json_text: str) -> LatexTokenizer:
        return cls(Tokenizer.from_str(json_text))

    def to_str(self) -> str:
        return self.hf.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (a reader never sees a half-written file)."""
        atomic_write_text(Path(path), self.hf.to_str())

    # -- use ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, formulas: Sequence[str], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids ``[BOS] … [EOS]`` (int64) right-padded with PAD, and the matching boolean mask.

        ``max_len`` (BOS and EOS included) truncates the ids; the EOS is kept as last token only
        when the formula fits, so a truncated target never teaches the model to stop early.
        """
        rows = [[BOS_ID, *e.ids, EOS_ID] for e in self.hf.encode_batch(list(formulas))]
        if max_len is not None:
            rows = [r[:max_len] for r in rows]
        width = max((len(r) for r in rows), default=2)
        ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
        return ids, ids != PAD_ID

    def lengths(self, formulas: Sequence[str]) -> list[int]:
        """Number of ids per formula, BOS and EOS included."""
        return [len(e.ids) + 2 for e in self.hf.encode_batch(list(formulas))]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Decode rows of ids (lists, a numpy array or a torch tensor), dropping BOS/PAD and
        everything from the first EOS on."""
        rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
        out = []
        for row in rows:
            if EOS_ID in row:
                row = row[: row.index(EOS_ID)]
            row = [t for t in row if t not in (PAD_ID, BOS_ID)]
            out.append(self.hf.decode(row, skip_special_tokens=True).strip())
        return out

    def decode_latex(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """:meth:`decode`, then :func:`~pix2tex.normalize.normalize`: the LaTeX that is shown and scored."""

        return [normalize(text) for text in self.decode(ids)]

