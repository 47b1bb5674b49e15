"""Datasets of formula images and their LaTeX.

:class:`Im2LatexDataset` keeps the seed's API (``load``/``save``/``combine``/``update``/iteration
in size-grouped batches/``prepare_data``/``generate_tokenizer``) on plain data: image paths,
sizes and normalized labels.  Its ``.pkl`` files hold only lists, dicts, strings and numbers, and
:func:`load_pickle` refuses anything else, so a crafted file cannot run code.

:class:`BatchDataset` wraps the same batches for ``torch.utils.data.DataLoader`` with worker
processes; its order depends only on (seed, epoch), which is what makes ``--resume`` exact.

Command line (seed)::

    python -m pix2tex.dataset.dataset -e LABELS… -s VOCAB_SIZE -o tokenizer.json   # tokenizer
    python -m pix2tex.dataset.dataset -i IMAGE_DIR -e LABELS -o OUT.pkl [--tokenizer T]  # dataset
    python -m pix2tex.dataset.dataset --combine A.pkl B.pkl … -o OUT.pkl   # one training set of several
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import pickletools
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pix2tex.config import ConfigError, check_corpus_weights, check_glyph_scale
from pix2tex.dataset.sampler import BatchSampler
from pix2tex.dataset.samples import SampleTable, Size
from pix2tex.dataset.transforms import test_transform, train_transform
from pix2tex.fileio import FileReadError, atomic_path, printable_name, read_limited
from pix2tex.normalize import normalize
from pix2tex.preprocess import (
    DEFAULT_GLYPH_HEIGHT,
    GLYPH_ESTIMATORS,
    BlankImageError,
    ImageLoadError,
    canvas_sizes,
    check_glyph_estimator,
    crop_to_content,
    estimate_glyph_height,
    load_image,
    prepare,
    to_batch,
)
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "DatasetError", "Im2LatexDataset", "BatchDataset", "Batch", "read_labels", "load_pickle",
    "load_image_gray", "combine_files", "main",
]

FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset file or its inputs are unusable; the message names the file and the reason."""


# -- safe pickles ----------------------------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for plain data: any class or function reference is refused.

    Lists, dicts, tuples, strings, numbers, booleans and None are encoded by pickle without
    naming a global, so ``find_class`` is only ever reached by a file that tries to build an
    object (``os.system``, ``builtins.eval``, numpy arrays, ...).
    """

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: dataset files hold plain data only")


MAX_PICKLE_BYTES = 2 * 2**30  # a dataset file larger than this is refused before it is read
MAX_CONTAINERS = 10_000  # lists/dicts/tuples in one dataset file (a real one has about 20)
MAX_NESTING = 16  # open MARKs at once (a real dataset file needs 2)
# The opcodes plain data needs: containers, strings, numbers, booleans, None, memo and frames.
_PLAIN_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET", "DICT", "LIST", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "FROZENSET",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
    "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET",
})
_CONTAINER_OPCODES = frozenset({"EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET", "DICT", "LIST", "TUPLE",
                                "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"})
_CLOSING_OPCODES = frozenset({"APPENDS", "SETITEMS", "ADDITEMS", "DICT", "LIST", "TUPLE", "FROZENSET", "POP_MARK"})


def _check_plain_pickle(data: bytes) -> None:
    """Refuse a pickle before building any object from it, unless it is plain data of sane shape.

    Walks the opcode stream (nothing is built): every opcode must be one that plain data needs
    (no globals, no reduce/build, no persistent ids, no buffers), every length it declares must fit
    in the file (a 14-byte file cannot make the loader allocate 100 GiB), and containers are few and
    shallow (no nesting bombs that end in a RecursionError).  Raises pickle.UnpicklingError.
    """

    containers = depth = 0
    try:
        for opcode, _arg, pos in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name not in _PLAIN_OPCODES:
                raise pickle.UnpicklingError(f"opcode {name} at byte {pos} is not plain data")
            if name == "MARK":
                depth += 1
                if depth > MAX_NESTING:
                    raise pickle.UnpicklingError(f"containers nested deeper than {MAX_NESTING} levels")
            elif name in _CLOSING_OPCODES:
                depth -= 1
            if name in _CONTAINER_OPCODES:
                containers += 1
                if containers > MAX_CONTAINERS:
                    raise pickle.UnpicklingError(f"more than {MAX_CONTAINERS:,} containers")
    except (ValueError, EOFError) as exc:  # genops: a declared length beyond the end of the data, …
        raise pickle.UnpicklingError(f"malformed pickle ({str(exc).splitlines()[0][:120]})") from None


def load_pickle(path: str | os.PathLike) -> Any:
    """Read a .pkl written by :meth:`Im2LatexDataset.save`, refusing anything but plain data.

    The bytes are checked by :func:`_check_plain_pickle` before anything is unpickled, and the
    unpickler itself refuses every class or function reference as well.
    """
    path = Path(path)
    try:
        data = read_limited(path, MAX_PICKLE_BYTES, "dataset file")
    except FileReadError as exc:
        raise DatasetError(str(exc)) from None
    try:
        _check_plain_pickle(data)
        return _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError,
            RecursionError) as exc:
        raise DatasetError(f"{path}: not a dataset file ({type(exc).__name__})") from None


# -- images and labels ------------------------------------------------------------------------------
def load_image_gray(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a grayscale uint8 array, exactly as prediction decodes its inputs
    (:func:`pix2tex.preprocess.load_image`: size limits, alpha, colour and EXIF handled alike), so
    that a model trains on the pixels it will read.  Raises :class:`ImageLoadError`."""
    return np.asarray(load_image(path))


def _inspect_image(path: Path, glyph_estimator: str = "soft") -> tuple[int, int, float | None] | str:
    """(height, width, glyph height) of the ink in a readable image, or why it is unusable.

    The size is that of the ink's bounding box, which is what the model will see after
    :func:`pix2tex.preprocess.prepare` crops the image (im2latex-100k images, for instance, are
    padded with white into a few bucket sizes).
    """
    try:
        if path.stat().st_size == 0:
            return "empty file"
        gray = load_image_gray(path)  # decodes fully: catches truncated and corrupt files too
    except FileNotFoundError:
        return "missing image"
    except ImageLoadError as exc:
        reason = str(exc).removeprefix(f"{printable_name(str(path))}: ")
        return "not an image" if reason.startswith("not an image") else f"unreadable image ({reason})"
    try:
        content = crop_to_content(gray)
    except BlankImageError:  # a formula that typesets to nothing visible (\phantom, spaces alone)
        return "blank image"
    return content.shape[0], content.shape[1], estimate_glyph_height(content, glyph_estimator)


def read_labels(path: str | os.PathLike) -> list[tuple[str | None, str]]:
    """Read a labels file as (image path or None, latex) pairs.

    Two formats: ``labels.tsv`` lines ``relative/path.png<TAB>latex`` (what the renderer writes),
    or the seed's plain formula list, one per line, whose images are named by line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    pairs: list[tuple[str | None, str]] = []
    for line in lines:
        if "\t" in line:
            image, latex = line.split("\t", 1)
            pairs.append((image, latex))
        else:
            pairs.append((None, line))
    return pairs


def _plain_image_name(index: int, image_dir: Path) -> str:
    """The seed's convention: the image of line N is N.png (we also accept zero padding)."""
    for name in (f"{index:07d}.png", f"{index}.png"):
        if (image_dir / name).exists():
            return name
    return f"{index:07d}.png"


@dataclass
class Batch:
    """One prepared batch: normalized images ``[B,1,H,W]``, target ids/mask ``[B,T]``, labels."""

    images: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    labels: list[str]
    indices: list[int] = field(default_factory=list)
    sizes: torch.Tensor | None = None  # [B, 2] long: each image's (height, width) inside the padded canvas


# -- the seed's dataset class ---------------------------------------------------------------------
class Im2LatexDataset:
    """Images + normalized LaTeX, iterated in batches of similar size (little padding).

    Args mirror the seed: ``equations`` (labels file) and ``images`` (image folder) build a new
    dataset; ``tokenizer`` (path to tokenizer.json) is needed to iterate.  Everything stored is
    plain data, so ``save``/``load`` round-trip through a safe pickle.
    """

    def __init__(self, equations: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                 tokenizer: str | os.PathLike | None = None, shuffle: bool = True, batchsize: int = 16,
                 max_seq_len: int = 512, max_dimensions: tuple[int, int] = (672, 192),
                 min_dimensions: tuple[int, int] = (32, 32), pad: bool = False,
                 keep_smaller_batches: bool = False, test: bool = False, patch_size: int = 16,
                 seed: int = 42, corpus_weights: dict[str, float] | None = None, max_label_tokens: int = 0,
                 augment_level: str = "full", length_pool: int = 0, glyph_estimator: str = "soft",
                 glyph_scale: float = 1.0):
        self.samples = SampleTable()
        self.skipped: Counter[str] = Counter()
        self.tokenizer_path: str | None = None
        self._tokenizer: LatexTokenizer | None = None
        self.shuffle, self.batchsize, self.max_seq_len = shuffle, batchsize, max_seq_len
        self.max_dimensions, self.min_dimensions = tuple(max_dimensions), tuple(min_dimensions)
        self.pad, self.keep_smaller_batches, self.test = pad, keep_smaller_batches, test
        self.patch_size, self.seed = patch_size, seed
        # Training-only filter (a curriculum): labels longer than this many tokens are left out (0: none).
        self.max_label_tokens = max_label_tokens
        self.augment_level = augment_level
        self.length_pool = length_pool  # see BatchSampler
        self.corpus_weights: dict[str, float] = _check_weights(corpus_weights or {})
        # How the glyph heights were measured (pix2tex.preprocess.GLYPH_ESTIMATORS); a model trained
        # on them reads images measured the same way (its folder's meta.json says so).
        self.glyph_estimator = _check_glyph_estimator(glyph_estimator)
        # Images are prepared with their glyphs glyph_scale x DEFAULT_GLYPH_HEIGHT pixels tall
        # (training's config key glyph_scale; a model trained so reads at that size).
        self.glyph_scale = check_glyph_scale(glyph_scale)
        self.epoch = 0
        self._cursor = 0
        self._order: list[list[int]] = []
        if equations is not None or images is not None:
            if equations is None or images is None:
                raise DatasetError("both equations (labels file) and images (folder) are needed to build a dataset")
            self._build(Path(equations), Path(images))
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    # -- building -------------------------------------------------------------------------------
    def _build(self, equations: Path, image_dir: Path) -> None:
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir}: image folder not found")
        root = image_dir.resolve()
        rows: dict[str, list] = {c: [] for c in SampleTable.COLUMNS}
        for index, (image, latex) in enumerate(read_labels(equations)):
            rel = image if image is not None else _plain_image_name(index, image_dir)
            # Image paths come from the labels file: never let one point outside the image folder.
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                self._skip(equations, index, "image path outside the image folder")
                continue
            label = normalize(latex)
            if not label:
                self._skip(equations, index, "empty label")
                continue
            size = _inspect_image(full, self.glyph_estimator)
            if isinstance(size, str):
                self._skip(equations, index, size)
                continue
            height, width, glyph = size
            row = {"root_ids": 0, "paths": str(full.relative_to(root)), "heights": height, "widths": width,
                   "glyphs": glyph, "labels": label}
            for column in SampleTable.COLUMNS:
                rows[column].append(row[column])
        self.samples = SampleTable(roots=(str(root),), **rows)

    def _skip(self, equations: Path, index: int, reason: str) -> None:
        self.skipped[reason] += 1
        print(f"warning: {equations}:{index + 1}: {reason}; left out", file=sys.stderr)

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "pix2tex-dataset", "version": FORMAT_VERSION,
            "roots": list(self.roots), **{c: list(getattr(self.samples, c)) for c in SampleTable.COLUMNS},
            "skipped": dict(self.skipped), "tokenizer": self.tokenizer_path,
            "settings": {
                "shuffle": self.shuffle, "batchsize": self.batchsize, "max_seq_len": self.max_seq_len,
                "max_dimensions": list(self.max_dimensions), "min_dimensions": list(self.min_dimensions),
                "pad": self.pad, "keep_smaller_batches": self.keep_smaller_batches, "test": self.test,
                "patch_size": self.patch_size, "seed": self.seed,
                "corpus_weights": dict(self.corpus_weights), "glyph_estimator": self.glyph_estimator,
                "glyph_scale": self.glyph_scale,
            },
        }

    def save(self, filename: str | os.PathLike) -> None:
        """Write the dataset as a plain-data pickle, atomically."""
        with atomic_path(filename) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump(self.to_dict(), fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, filename: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> Im2LatexDataset:
        """Read a dataset written by :meth:`save` (safe: plain data only).

        Image folders (roots) may be relative: they are relative to the .pkl file's folder.
        """
        ds = cls.load_dict(load_pickle(filename), source=str(filename))
        # A dataset moved together with its images still loads: try roots relative to the .pkl.
        base = Path(filename).resolve().parent
        roots = []
        for root in ds.roots:
            if not Path(root).is_absolute():
                root = str(base / root)
            elif not Path(root).is_dir() and (base / Path(root).name).is_dir():
                root = str(base / Path(root).name)
            roots.append(root)
        ds.samples = ds.samples.with_roots(roots)
        tok, ds.tokenizer_path = tokenizer or ds.tokenizer_path, None
        if tok is not None and Path(tok).is_file():
            ds.set_tokenizer(tok)
        elif tokenizer is not None:
            raise DatasetError(f"{tokenizer}: tokenizer file not found")
        return ds

    @classmethod
    def load_dict(cls, data: Any, source: str = "<dict>") -> Im2LatexDataset:
        """A dataset from :meth:`to_dict`'s plain data (no tokenizer loaded, roots as stored)."""
        filename = source
        if not isinstance(data, dict) or data.get("format") != "pix2tex-dataset":
            raise DatasetError(f"{filename}: not a pix2tex dataset file")
        _check_fields(data, filename)
        try:
            ds = cls(**data["settings"])
            # Files written before glyph heights were kept have none: every glyph height unknown.
            glyphs = data.get("glyphs") or [None] * len(data["paths"])
            ds.samples = SampleTable(data["roots"], **{c: data[c] for c in SampleTable.COLUMNS if c != "glyphs"},
                                     glyphs=glyphs)
            ds.skipped = Counter(data.get("skipped", {}))
            ds.tokenizer_path = data.get("tokenizer")
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{filename}: malformed dataset file ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:  # columns of different lengths, a root id out of range
            raise DatasetError(f"{filename}: {exc}") from None
        return ds

    # -- seed API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def combine(self, other: Im2LatexDataset) -> None:
        """Append the samples of ``other`` (its image folders are kept as separate roots)."""
        self.samples = self.samples.concat(other.samples)
        self.skipped.update(other.skipped)
        self._order = []

    # The table's columns, read-only (the seed's datasets had these as lists).
    roots = property(lambda self: self.samples.roots)
    root_ids = property(lambda self: self.samples.root_ids)
    paths = property(lambda self: self.samples.paths)
    heights = property(lambda self: self.samples.heights)
    widths = property(lambda self: self.samples.widths)
    glyphs = property(lambda self: self.samples.glyphs)
    labels = property(lambda self: self.samples.labels)

    def update(self, **kwargs: Any) -> None:
        """Change iteration settings (batchsize, shuffle, pad, keep_smaller_batches, test,
        max_seq_len, max_dimensions, min_dimensions, patch_size, seed, corpus_weights, glyph_scale,
        tokenizer)."""
        # corpus_weights and glyph_scale are checked on their own below; glyph_estimator describes
        # the stored glyph heights (remeasure_glyphs changes it together with them).
        allowed = set(_SETTING_TYPES) - {"corpus_weights", "glyph_estimator", "glyph_scale"}
        for key, value in kwargs.items():
            if key == "tokenizer":
                if value is not None:
                    self.set_tokenizer(value)
            elif key == "corpus_weights":
                self.corpus_weights = _check_weights(value or {})
            elif key == "glyph_scale":
                self.glyph_scale = check_glyph_scale(value)
            elif key in allowed:
                setattr(self, key, tuple(value) if key.endswith("dimensions") else value)
            else:
                raise TypeError(f"update() got an unknown setting '{key}'")
        self._order = []

    def remeasure_glyphs(self, glyph_estimator: str) -> int:
        """Measure every image's glyph height again with ``glyph_estimator``; returns how many
        images have none (no glyph-like ink: they are read at their own size, as before)."""
        _check_glyph_estimator(glyph_estimator)
        glyphs = []
        for i in range(len(self)):
            measured = _inspect_image(self.image_path(i), glyph_estimator)
            if isinstance(measured, str):
                raise DatasetError(f"{self.image_path(i)}: {measured}")
            glyphs.append(measured[2])
        self.samples = replace(self.samples, glyphs=tuple(glyphs))
        self.glyph_estimator = glyph_estimator
        self._order = []
        return sum(g is None for g in glyphs)

    def set_tokenizer(self, tokenizer: str | os.PathLike | LatexTokenizer) -> None:
        if isinstance(tokenizer, LatexTokenizer):
            self._tokenizer = tokenizer
        else:
            self._tokenizer = LatexTokenizer.load(tokenizer)
            self.tokenizer_path = str(tokenizer)

    @property
    def tokenizer(self) -> LatexTokenizer:
        if self._tokenizer is None:
            raise DatasetError("dataset has no tokenizer: pass tokenizer= or call set_tokenizer()")
        return self._tokenizer

    def image_path(self, index: int) -> Path:
        return self.samples.image_path(index)

    def corpus(self, index: int) -> str:
        """The corpus a sample comes from (see :meth:`SampleTable.corpus`)."""
        return self.samples.corpus(index)

    def corpus_sizes(self) -> Counter[str]:
        """Number of samples per corpus."""
        return self.samples.corpus_sizes()

    # -- batching -------------------------------------------------------------------------------
    def prepared_size(self, index: int) -> Size:
        """(height, width) of the image after :func:`pix2tex.preprocess.prepare`, before the size limits."""
        return self.samples.prepared_size(index, self.glyph_scale)

    @property
    def sampler(self) -> BatchSampler:
        """This dataset's batching settings as a :class:`BatchSampler` (they are attributes here, as in
        the original pix2tex, and change through update())."""
        return BatchSampler(
            batchsize=self.batchsize, shuffle=self.shuffle, seed=self.seed, patch_size=self.patch_size,
            max_size=Size.from_wh(self.max_dimensions), min_size=Size.from_wh(self.min_dimensions),
            max_tokens=min(self.max_seq_len, self.max_label_tokens or self.max_seq_len),
            keep_smaller_batches=self.keep_smaller_batches, length_pool=self.length_pool,
            corpus_weights=self.corpus_weights, glyph_scale=self.glyph_scale)

    def eligible(self) -> list[int]:
        """Indices whose (prepared) image fits the size limits and whose label fits max_seq_len
        (and max_label_tokens, where set)."""
        return self.sampler.eligible(self.samples, self._label_lengths())

    def _label_lengths(self) -> list[int] | None:
        """Token counts of all labels, computed once per tokenizer and sample table."""
        if self._tokenizer is None:
            return None
        key = (self._tokenizer, self.samples)
        cached = getattr(self, "_lengths", None)
        if cached is None or cached[0] is not key[0] or cached[1] is not key[1]:
            self._lengths = (*key, self._tokenizer.lengths(list(self.samples.labels)))
        return self._lengths[2]

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch; a pure function of (data, settings, seed, epoch)."""
        return self.sampler.batches(self.samples, self._label_lengths(), epoch)

    def __iter__(self) -> Iterator[Batch]:
        self._order = self.batches(self.epoch)
        self._cursor = 0
        return self

    def __next__(self) -> Batch:
        if self._cursor >= len(self._order):
            self.epoch += 1
            raise StopIteration
        batch = self._order[self._cursor]
        self._cursor += 1
        return self.prepare_data(batch)

    def __getstate__(self) -> dict[str, Any]:
        # Worker processes get plain data; the tokenizer travels as its JSON text.
        state = self.__dict__.copy()
        state["_tokenizer"] = self._tokenizer.to_str() if self._tokenizer is not None else None
        state.pop("_lengths", None)  # keyed by this process's tokenizer object: useless in a worker
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        tok = state.get("_tokenizer")
        state["_tokenizer"] = LatexTokenizer.from_str(tok) if isinstance(tok, str) else None
        self.__dict__.update(state)

    def prepare_data(self, batch: Sequence[int], augment_seed: int | None = None) -> Batch:
        """Load the images of ``batch``, apply the train or test transform, tokenize the labels.

        Every image then goes through :func:`pix2tex.preprocess.prepare`, as at inference.
        ``augment_seed`` makes the training augmentation reproducible (each sample derives its
        own seed from it), which exact resume relies on.
        """
        transform = test_transform() if self.test else train_transform(self.augment_level)
        max_size, min_size = Size.from_wh(self.max_dimensions), Size.from_wh(self.min_dimensions)
        images = []
        seen: Counter[int] = Counter()  # a sample repeated by corpus_weights can meet itself in a batch
        for i in batch:
            image = load_image_gray(self.image_path(i))
            if not self.test:
                if augment_seed is not None:
                    # Each copy gets its own augmentation; the first keeps the seed it always had.
                    copy = seen[i]
                    seen[i] += 1
                    transform.set_random_seed((augment_seed * 1_000_003 + i + copy * 7_919_993) % 2**32)
                try:
                    image = transform(image=image)["image"]
                except (ZeroDivisionError, ValueError):
                    # albumentations' GridDistortion divides by zero on renders only a few pixels wide
                    # (a "|" or "." alone): such an image is used as rendered.
                    pass
            # The same crop, contrast and glyph-scale normalization as inference (pix2tex.preprocess),
            # so the model is trained on exactly the kind of input it will be given.  The glyph
            # height is the one measured on the clean render: measured again after blur, erosion or
            # noise it is off by 2-3x for ~7 % of images, which then blow up the whole batch's canvas.
            try:
                image = prepare(Image.fromarray(image), patch_size=self.patch_size, max_height=max_size.height,
                                max_width=max_size.width, glyph_height=self.samples.glyphs[i] or None,
                                target_glyph_height=DEFAULT_GLYPH_HEIGHT * self.glyph_scale,
                                glyph_estimator=self.glyph_estimator)
            except ValueError:  # no measurable ink left after augmentation: use it as it is
                image = _fit(image, max_size)
            images.append(image)
        p = self.patch_size
        if self.pad:
            height, width = max_size
        else:
            height = min(max_size.height, max(math.ceil(max(im.shape[0], min_size.height) / p) * p for im in images))
            width = min(max_size.width, max(math.ceil(max(im.shape[1], min_size.width) / p) * p for im in images))
        labels = [self.samples.labels[i] for i in batch]
        ids, mask = self.tokenizer.encode(labels, max_len=self.max_seq_len)
        return Batch(torch.from_numpy(to_batch(images, p, height, width)), torch.from_numpy(ids),
                     torch.from_numpy(mask), labels, list(batch),
                     torch.from_numpy(canvas_sizes(images, height, width)))

    # -- tokenizer (seed) ---------------------------------------------------------------------------
    @staticmethod
    def generate_tokenizer(equations: Sequence[str | os.PathLike], output: str | os.PathLike,
                           vocab_size: int, kind: str = "bpe") -> LatexTokenizer:
        """Train a tokenizer (``kind`` "bpe" or "tokens") on the normalized labels of ``equations`` and save it."""
        formulas = [normalize(latex) for path in equations for _, latex in read_labels(path)]
        tok = LatexTokenizer.train([f for f in formulas if f], vocab_size, kind=kind)
        tok.save(output)
        return tok


_FIELD_TYPES = {"roots": (str,), "paths": (str,), "root_ids": (int,), "widths": (int,), "heights": (int,),
                "glyphs": (float, int, type(None)), "labels": (str,)}
_SETTING_TYPES = {"shuffle": (bool,), "batchsize": (int,), "max_seq_len": (int,), "max_dimensions": (list, tuple),
                  "min_dimensions": (list, tuple), "pad": (bool,), "keep_smaller_batches": (bool,), "test": (bool,),
                  "patch_size": (int,), "seed": (int,), "corpus_weights": (dict,), "max_label_tokens": (int,),
                  "augment_level": (str,), "length_pool": (int,), "glyph_estimator": (str,),
                  "glyph_scale": (float, int)}


def _check_glyph_estimator(name: str) -> str:
    try:
        return check_glyph_estimator(name)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def _check_fields(data: dict, filename: str) -> None:
    """Check a dataset file's fields and settings by type before anything uses them.

    Messages name the field, never the untrusted value (formatting a crafted object, e.g. one
    made of shared references, could take forever or exhaust memory).
    """
    for key, types in _FIELD_TYPES.items():
        values = data.get(key)
        if key == "glyphs" and values is None:
            continue  # files written before glyph heights were kept: every glyph height unknown
        if not isinstance(values, list) or not all(type(v) in types for v in values):
            raise DatasetError(f"{filename}: field '{key}' must be a list of {'/'.join(t.__name__ for t in types)}")
        if key in ("widths", "heights") and not all(v > 0 for v in values):
            raise DatasetError(f"{filename}: field '{key}' must hold positive sizes")
        if key == "glyphs" and not all(v is None or (math.isfinite(v) and v > 0) for v in values):
            raise DatasetError(f"{filename}: field 'glyphs' must hold positive glyph heights or null")
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise DatasetError(f"{filename}: field 'settings' must be a mapping")
    for key, value in settings.items():
        if key not in _SETTING_TYPES:
            raise DatasetError(f"{filename}: unknown setting in 'settings'")
        if type(value) not in _SETTING_TYPES[key]:
            raise DatasetError(f"{filename}: setting '{key}' has the wrong type")
        if key.endswith("dimensions") and (len(value) != 2 or not all(type(v) is int and v > 0 for v in value)):
            raise DatasetError(f"{filename}: setting '{key}' must be two positive integers")
        if key in ("batchsize", "max_seq_len", "patch_size") and value < 1:
            raise DatasetError(f"{filename}: setting '{key}' must be at least 1")
        if key in ("max_label_tokens", "length_pool") and value < 0:
            raise DatasetError(f"{filename}: setting '{key}' must not be negative")
        if key == "augment_level" and value not in ("light", "full"):
            raise DatasetError(f"{filename}: setting 'augment_level' must be 'light' or 'full'")
        if key == "corpus_weights" and not all(type(k) is str and type(v) in (int, float) for k, v in value.items()):
            raise DatasetError(f"{filename}: setting 'corpus_weights' must map names to numbers")
    if not isinstance(data.get("skipped", {}), dict) or not all(
            type(k) is str and type(v) is int for k, v in data.get("skipped", {}).items()):
        raise DatasetError(f"{filename}: field 'skipped' must map reasons to counts")
    if data.get("tokenizer") is not None and type(data["tokenizer"]) is not str:
        raise DatasetError(f"{filename}: field 'tokenizer' must be a path or null")


def _check_weights(weights: Any) -> dict[str, float]:
    """Validate a {corpus: weight} mapping (weights finite and >= 0)."""
    if not isinstance(weights, dict):
        raise DatasetError(f"corpus_weights must map corpus names to numbers, got {weights!r}")
    try:
        return check_corpus_weights(weights)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None


def _fit(image: np.ndarray, max_size: Size) -> np.ndarray:
    """Shrink an (augmented) image that grew past the size limit, keeping its aspect ratio."""
    max_h, max_w = max_size
    h, w = image.shape
    if h <= max_h and w <= max_w:
        return image
    scale = min(max_h / h, max_w / w)
    pil = Image.fromarray(image).resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.LANCZOS)
    return np.asarray(pil)


class BatchDataset(torch.utils.data.Dataset):
    """Map-style view of one epoch's batches for a DataLoader (``batch_size=None``).

    Item ``k`` is batch ``start + k`` of ``epoch``; every sample's augmentation is seeded from
    (seed, epoch, batch), so the result does not depend on the number of worker processes.
    """

    def __init__(self, dataset: Im2LatexDataset, epoch: int, start: int = 0):
        self.dataset = dataset
        self.epoch = epoch
        self.order = dataset.batches(epoch)
        self.start = start

    def __len__(self) -> int:
        return max(0, len(self.order) - self.start)

    def __getitem__(self, k: int) -> Batch:
        index = self.start + k
        seed = (self.dataset.seed * 7919 + self.epoch) * 1_000_003 + index
        return self.dataset.prepare_data(self.order[index], augment_seed=seed % 2**31)


def collate_batch(batch: Batch) -> Batch:
    """Identity collate: items are already whole batches."""
    return batch


# -- command line -------------------------------------------------------------------------------------
def combine_files(paths: Sequence[str | os.PathLike]) -> Im2LatexDataset:
    """One dataset holding the samples of the dataset files ``paths``, in order, with the first
    one's settings and tokenizer.  Their glyph heights must have been measured the same way (a
    model is trained on one measure), and their tokenizers must be the same file or absent."""
    first, *rest = [Im2LatexDataset.load(p) for p in paths]
    tokenizer = first.tokenizer_path
    for path, ds in zip(paths[1:], rest, strict=True):
        if ds.glyph_estimator != first.glyph_estimator:
            raise DatasetError(f"{path}: glyphs measured with {ds.glyph_estimator!r}, {paths[0]} with "
                               f"{first.glyph_estimator!r} (python -m pix2tex.dataset.dataset --remeasure)")
        if (None not in (tokenizer, ds.tokenizer_path)
                and Path(tokenizer).resolve() != Path(ds.tokenizer_path).resolve()):
            raise DatasetError(f"{path}: tokenizer {ds.tokenizer_path}, {paths[0]} has {tokenizer}")
        first.combine(ds)
        tokenizer = tokenizer or ds.tokenizer_path
    first.tokenizer_path = tokenizer
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.dataset.dataset",
                                     description="Train a tokenizer (-e … -s N -o tokenizer.json), build a dataset "
                                                 "(-i IMAGES -e LABELS -o OUT.pkl) or measure a dataset's glyph "
                                                 "heights again (--remeasure IN.pkl --glyph-estimator NAME -o OUT.pkl) "
                                                 "or join datasets (--combine A.pkl B.pkl … -o OUT.pkl).")
    parser.add_argument("-i", "--images", help="image folder (builds a dataset)")
    parser.add_argument("-e", "--equations", nargs="+", help="labels.tsv or formula files")
    parser.add_argument("-o", "--out", required=True, help="output .pkl or tokenizer.json")
    parser.add_argument("-s", "--vocab-size", type=int, default=8000, help="largest vocabulary size")
    parser.add_argument("--kind", choices=("bpe", "tokens"), default="bpe",
                        help="bpe: merged multi-token ids; tokens: one id per LaTeX token")
    parser.add_argument("-t", "--tokenizer", help="tokenizer.json recorded in the dataset")
    parser.add_argument("--glyph-estimator", choices=GLYPH_ESTIMATORS, default="soft",
                        help="how glyph heights are measured (pix2tex.preprocess.GLYPH_ESTIMATORS)")
    parser.add_argument("--remeasure", metavar="IN.pkl",
                        help="write IN.pkl with every glyph height measured again by --glyph-estimator")
    parser.add_argument("--combine", nargs="+", metavar="IN.pkl",
                        help="write the samples of all these datasets into one (each keeps its image folder, "
                             "so corpus weights still tell them apart); their glyph estimators must match")
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.remeasure, args.equations, args.combine)) != 1:
        parser.error("give one of -e (a tokenizer or a dataset to build), --remeasure IN.pkl or --combine IN.pkl…")
    try:
        if args.combine is not None:
            ds = combine_files(args.combine)
            ds.save(args.out)
            sizes = ", ".join(f"{name or '(root)'} {n}" for name, n in sorted(ds.corpus_sizes().items()))
            print(f"wrote {args.out}: {len(ds)} samples ({sizes})")
            return 0
        if args.remeasure is not None:
            ds = Im2LatexDataset.load(args.remeasure)
            unmeasured = ds.remeasure_glyphs(args.glyph_estimator)
            ds.save(args.out)
            print(f"wrote {args.out}: {len(ds)} samples, glyphs measured with {args.glyph_estimator} "
                  f"({unmeasured} without glyph-like ink)")
            return 0
        if args.images is None:
            tok = Im2LatexDataset.generate_tokenizer(args.equations, args.out, args.vocab_size, args.kind)
            print(f"wrote {args.out}: {tok.vocab_size} tokens")
            return 0
        if len(args.equations) != 1:
            raise DatasetError("building a dataset takes exactly one labels file (-e)")
        ds = Im2LatexDataset(args.equations[0], args.images, tokenizer=args.tokenizer,
                             glyph_estimator=args.glyph_estimator)
        ds.save(args.out)
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(ds.skipped.items())) or "none"
        print(f"wrote {args.out}: {len(ds)} samples (left out: {skipped})")
        return 0
    except (ValueError, OSError) as exc:  # DatasetError and TokenizerError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
