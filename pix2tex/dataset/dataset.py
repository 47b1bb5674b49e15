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
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pix2tex.config import ConfigError, check_corpus_weights
from pix2tex.dataset.transforms import test_transform, train_transform
from pix2tex.fileio import FileReadError, atomic_path, read_limited
from pix2tex.normalize import normalize
from pix2tex.preprocess import (DEFAULT_GLYPH_HEIGHT, MARGIN, MAX_FILE_BYTES, canvas_sizes, crop_to_content,
                                estimate_glyph_height, prepare, to_batch)
from pix2tex.tokenizer import LatexTokenizer

__all__ = [
    "DatasetError", "Im2LatexDataset", "BatchDataset", "Batch", "read_labels", "load_pickle",
    "load_image_gray", "main",
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
    import pickletools

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
    """Decode an image file to a grayscale uint8 array (alpha composited over white).

    Only regular files of at most MAX_FILE_BYTES are read (see :func:`pix2tex.fileio.read_limited`).
    """
    with Image.open(io.BytesIO(read_limited(path, MAX_FILE_BYTES, "file"))) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        return np.asarray(im.convert("L"))


def _inspect_image(path: Path) -> tuple[int, int, float | None] | str:
    """(width, height, glyph height) of the ink in a readable image, or why it is unusable.

    The size is that of the ink's bounding box, which is what the model will see after
    :func:`pix2tex.preprocess.prepare` crops the image (im2latex-100k images, for instance, are
    padded with white into a few bucket sizes).
    """
    try:
        if path.stat().st_size == 0:
            return "empty file"
        gray = load_image_gray(path)  # decodes fully: catches truncated and corrupt files too
        content = crop_to_content(gray)
        return content.shape[1], content.shape[0], estimate_glyph_height(content)
    except FileNotFoundError:
        return "missing image"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image ({exc})"


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
                 augment_level: str = "full", length_pool: int = 0):
        self.roots: list[str] = []
        self.paths: list[str] = []
        self.root_ids: list[int] = []
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.glyphs: list[float | None] = []  # estimated glyph heights (see pix2tex.preprocess)
        self.labels: list[str] = []
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
        # Batches of similar label length (0: off): each size bucket's shuffled samples are cut into
        # pools of length_pool batches, and each pool is sorted by label length before it is cut
        # into batches.  Half of the target tokens of size-only buckets are padding otherwise.
        self.length_pool = length_pool
        # Per-corpus sampling weights (see corpus()): a corpus of weight 3 is seen three times per
        # epoch, one of weight 0.5 half the time; unnamed corpora keep weight 1.
        self.corpus_weights: dict[str, float] = _check_weights(corpus_weights or {})
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
        self.roots = [str(root)]
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
            size = _inspect_image(full)
            if isinstance(size, str):
                self._skip(equations, index, size)
                continue
            self.paths.append(str(full.relative_to(root)))
            self.root_ids.append(0)
            self.widths.append(size[0])
            self.heights.append(size[1])
            self.glyphs.append(size[2])
            self.labels.append(label)

    def _skip(self, equations: Path, index: int, reason: str) -> None:
        self.skipped[reason] += 1
        print(f"warning: {equations}:{index + 1}: {reason}; left out", file=sys.stderr)

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "pix2tex-dataset", "version": FORMAT_VERSION,
            "roots": list(self.roots), "paths": list(self.paths), "root_ids": list(self.root_ids),
            "widths": list(self.widths), "heights": list(self.heights), "glyphs": list(self.glyphs),
            "labels": list(self.labels),
            "skipped": dict(self.skipped), "tokenizer": self.tokenizer_path,
            "settings": {
                "shuffle": self.shuffle, "batchsize": self.batchsize, "max_seq_len": self.max_seq_len,
                "max_dimensions": list(self.max_dimensions), "min_dimensions": list(self.min_dimensions),
                "pad": self.pad, "keep_smaller_batches": self.keep_smaller_batches, "test": self.test,
                "patch_size": self.patch_size, "seed": self.seed,
                "corpus_weights": dict(self.corpus_weights),
            },
        }

    def save(self, filename: str | os.PathLike) -> None:
        """Write the dataset as a plain-data pickle, atomically."""
        with atomic_path(filename) as tmp:
            with open(tmp, "wb") as fh:
                pickle.dump(self.to_dict(), fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, filename: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> "Im2LatexDataset":
        """Read a dataset written by :meth:`save` (safe: plain data only).

        Image folders (roots) may be relative: they are relative to the .pkl file's folder.
        """
        ds = cls.load_dict(load_pickle(filename), source=str(filename))
        # A dataset moved together with its images still loads: try roots relative to the .pkl.
        base = Path(filename).resolve().parent
        for k, root in enumerate(ds.roots):
            if not Path(root).is_absolute():
                ds.roots[k] = str(base / root)
            elif not Path(root).is_dir() and (base / Path(root).name).is_dir():
                ds.roots[k] = str(base / Path(root).name)
        tok, ds.tokenizer_path = tokenizer or ds.tokenizer_path, None
        if tok is not None and Path(tok).is_file():
            ds.set_tokenizer(tok)
        elif tokenizer is not None:
            raise DatasetError(f"{tokenizer}: tokenizer file not found")
        return ds

    @classmethod
    def load_dict(cls, data: Any, source: str = "<dict>") -> "Im2LatexDataset":
        """A dataset from :meth:`to_dict`'s plain data (no tokenizer loaded, roots as stored)."""
        filename = source
        if not isinstance(data, dict) or data.get("format") != "pix2tex-dataset":
            raise DatasetError(f"{filename}: not a pix2tex dataset file")
        _check_fields(data, filename)
        try:
            ds = cls(**data["settings"])
            n = len(data["paths"])
            for key in ("root_ids", "widths", "heights", "labels"):
                if len(data[key]) != n:
                    raise DatasetError(f"{filename}: '{key}' has {len(data[key])} entries for {n} images")
            ds.roots = [str(r) for r in data["roots"]]
            ds.paths, ds.root_ids = list(data["paths"]), list(data["root_ids"])
            ds.widths, ds.heights, ds.labels = list(data["widths"]), list(data["heights"]), list(data["labels"])
            ds.skipped = Counter(data.get("skipped", {}))
            ds.glyphs = list(data.get("glyphs") or [None] * n)
            if len(ds.glyphs) != n:
                raise DatasetError(f"{filename}: 'glyphs' has {len(ds.glyphs)} entries for {n} images")
            ds.tokenizer_path = data.get("tokenizer")
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{filename}: malformed dataset file ({type(exc).__name__}: {exc})") from None
        return ds

    # -- seed API -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def combine(self, other: "Im2LatexDataset") -> None:
        """Append the samples of ``other`` (its image folders are kept as separate roots)."""
        offset = len(self.roots)
        self.roots += other.roots
        self.paths += other.paths
        self.root_ids += [r + offset for r in other.root_ids]
        self.widths += other.widths
        self.heights += other.heights
        self.glyphs += other.glyphs
        self.labels += other.labels
        self.skipped.update(other.skipped)
        self._order = []

    def update(self, **kwargs: Any) -> None:
        """Change iteration settings (batchsize, shuffle, pad, keep_smaller_batches, test,
        max_seq_len, max_dimensions, min_dimensions, patch_size, seed, corpus_weights, tokenizer)."""
        allowed = set(_SETTING_TYPES) - {"corpus_weights"}  # corpus_weights is checked on its own below
        for key, value in kwargs.items():
            if key == "tokenizer":
                if value is not None:
                    self.set_tokenizer(value)
            elif key == "corpus_weights":
                self.corpus_weights = _check_weights(value or {})
            elif key in allowed:
                setattr(self, key, tuple(value) if key.endswith("dimensions") else value)
            else:
                raise TypeError(f"update() got an unknown setting '{key}'")
        self._order = []

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
        return Path(self.roots[self.root_ids[index]]) / self.paths[index]

    def corpus(self, index: int) -> str:
        """The corpus a sample comes from: the name of the folder holding its ``images/`` folder
        (``render/<corpus>/images/0000001.png``, as create_data.sh names it after the formula file),
        or of its image's own folder in other layouts ("" for images at the dataset's root)."""
        folder = Path(self.paths[index]).parent
        return folder.parent.name if folder.name == "images" else folder.name

    def corpus_sizes(self) -> Counter[str]:
        """Number of samples per corpus."""
        return Counter(self.corpus(i) for i in range(len(self)))

    # -- batching -------------------------------------------------------------------------------
    def prepared_size(self, index: int) -> tuple[int, int]:
        """(height, width) the image will have after :func:`pix2tex.preprocess.prepare`, before
        shrinking to the size limits: its ink scaled to the training glyph height, plus margins."""
        h, w, glyph = self.heights[index], self.widths[index], self.glyphs[index]
        scale = DEFAULT_GLYPH_HEIGHT / glyph if glyph else 1.0
        return round(h * scale) + 2 * MARGIN, round(w * scale) + 2 * MARGIN

    def eligible(self) -> list[int]:
        """Indices whose (prepared) image fits the size limits and whose label fits max_seq_len
        (and max_label_tokens, where set)."""
        max_w, max_h = self.max_dimensions
        lengths = self._label_lengths()
        longest = min(self.max_seq_len, self.max_label_tokens or self.max_seq_len)
        keep = []
        for i in range(len(self)):
            h, w = self.prepared_size(i)
            if w > max_w or h > max_h:
                continue
            if lengths is not None and lengths[i] > longest:
                continue
            keep.append(i)
        return keep

    def _label_lengths(self) -> list[int] | None:
        """Token counts of all labels, computed once per tokenizer and sample set."""
        if self._tokenizer is None:
            return None
        key = (id(self._tokenizer), len(self.labels))
        if getattr(self, "_lengths_key", None) != key:
            self._lengths = self._tokenizer.lengths(self.labels)
            self._lengths_key = key
        return self._lengths

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of one epoch; a pure function of (data, settings, seed, epoch)."""
        rng = random.Random(f"{self.seed}:{epoch}")
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        p = self.patch_size
        min_w, min_h = self.min_dimensions
        for i in self.eligible():
            h, w = self.prepared_size(i)
            key = (math.ceil(max(h, min_h) / p), math.ceil(max(w, min_w) / p))
            buckets[key] += [i] * self._copies(i, rng)
        out: list[list[int]] = []
        # Neighbouring buckets are merged until a batch fills, so rare sizes are not dropped.
        pending: list[int] = []
        lengths = self._label_lengths() if self.length_pool else None
        for key in sorted(buckets):
            members = buckets[key]
            if self.shuffle:
                rng.shuffle(members)
            if lengths is not None:
                pool = self.length_pool * self.batchsize
                members = [i for lo in range(0, len(members), pool)
                           for i in sorted(members[lo : lo + pool], key=lengths.__getitem__)]
            pending += members
            while len(pending) >= self.batchsize:
                out.append(pending[: self.batchsize])
                pending = pending[self.batchsize :]
        if pending and (self.keep_smaller_batches or not out):
            out.append(pending)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def _copies(self, index: int, rng: random.Random) -> int:
        """How often a sample appears in an epoch under ``corpus_weights``: the weight's whole
        part, plus one more with probability its fraction.  Draws from ``rng`` only for
        fractional weights, so datasets without them keep the order they always had."""
        if not self.corpus_weights:
            return 1
        weight = self.corpus_weights.get(self.corpus(index), 1.0)
        whole, frac = divmod(weight, 1.0)
        return int(whole) + (1 if frac and rng.random() < frac else 0)

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
        max_w, max_h = self.max_dimensions
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
                image = prepare(Image.fromarray(image), patch_size=self.patch_size, max_height=max_h,
                                max_width=max_w, glyph_height=self.glyphs[i] or None)
            except ValueError:  # no measurable ink left after augmentation: use it as it is
                image = _fit(image, self.max_dimensions)
            images.append(image)
        min_w, min_h = self.min_dimensions
        p = self.patch_size
        if self.pad:
            height, width = max_h, max_w
        else:
            height = min(max_h, max(math.ceil(max(im.shape[0], min_h) / p) * p for im in images))
            width = min(max_w, max(math.ceil(max(im.shape[1], min_w) / p) * p for im in images))
        labels = [self.labels[i] for i in batch]
        ids, mask = self.tokenizer.encode(labels, max_len=self.max_seq_len)
        return Batch(to_batch(images, p, height, width), ids, mask, labels, list(batch),
                     canvas_sizes(images, height, width))

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
                  "augment_level": (str,), "length_pool": (int,)}


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
    settings = data.get("settings")
    if not isinstance(settings, dict):
        raise DatasetError(f"{filename}: field 'settings' must be a mapping")
    for key, value in settings.items():
        if key not in _SETTING_TYPES:
            raise DatasetError(f"{filename}: unknown setting in 'settings'")
        if type(value) not in _SETTING_TYPES[key]:
            raise DatasetError(f"{filename}: setting '{key}' has the wrong type")
        if key.endswith("dimensions") and (len(value) != 2 or not all(type(v) is int for v in value)):
            raise DatasetError(f"{filename}: setting '{key}' must be two integers")
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


def _fit(image: np.ndarray, max_dimensions: tuple[int, int]) -> np.ndarray:
    """Shrink an (augmented) image that grew past the size limit, keeping its aspect ratio."""
    max_w, max_h = max_dimensions
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
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pix2tex.dataset.dataset",
                                     description="Train a tokenizer (-e … -s N -o tokenizer.json) or build a dataset "
                                                 "(-i IMAGES -e LABELS -o OUT.pkl).")
    parser.add_argument("-i", "--images", help="image folder (builds a dataset)")
    parser.add_argument("-e", "--equations", nargs="+", required=True, help="labels.tsv or formula files")
    parser.add_argument("-o", "--out", required=True, help="output .pkl or tokenizer.json")
    parser.add_argument("-s", "--vocab-size", type=int, default=8000, help="largest vocabulary size")
    parser.add_argument("--kind", choices=("bpe", "tokens"), default="bpe",
                        help="bpe: merged multi-token ids; tokens: one id per LaTeX token")
    parser.add_argument("-t", "--tokenizer", help="tokenizer.json recorded in the dataset")
    args = parser.parse_args(argv)
    try:
        if args.images is None:
            tok = Im2LatexDataset.generate_tokenizer(args.equations, args.out, args.vocab_size, args.kind)
            print(f"wrote {args.out}: {tok.vocab_size} tokens")
            return 0
        if len(args.equations) != 1:
            raise DatasetError("building a dataset takes exactly one labels file (-e)")
        ds = Im2LatexDataset(args.equations[0], args.images, tokenizer=args.tokenizer)
        ds.save(args.out)
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(ds.skipped.items())) or "none"
        print(f"wrote {args.out}: {len(ds)} samples (left out: {skipped})")
        return 0
    except (ValueError, OSError) as exc:  # DatasetError and TokenizerError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
