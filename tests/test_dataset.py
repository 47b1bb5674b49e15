"""Im2LatexDataset on the real im2latex sample images, plus broken inputs made in tmp_path."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pix2tex.config import ConfigError
from pix2tex.dataset.dataset import (
    BatchDataset,
    DatasetError,
    Im2LatexDataset,
    load_image_gray,
    load_pickle,
    read_labels,
)
from pix2tex.dataset.transforms import train_transform
from pix2tex.normalize import normalize
from pix2tex.preprocess import MEAN, STD
from pix2tex.tokenizer import BOS_ID, LatexTokenizer
from tests.helpers import REPO, SAMPLE


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    labels = [normalize(latex) for _, latex in read_labels(SAMPLE / "labels.tsv")]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    LatexTokenizer.train(labels, 600).save(path)
    return path


@pytest.fixture(scope="module")
def sample(tokenizer_path):
    return Im2LatexDataset(SAMPLE / "labels.tsv", SAMPLE, tokenizer=tokenizer_path, batchsize=8,
                           max_dimensions=(800, 160), test=True)


def test_builds_from_real_images(sample):
    assert len(sample) == 986
    assert not sample.skipped
    assert sample.labels[0] == normalize(read_labels(SAMPLE / "labels.tsv")[0][1])


def test_batches_group_sizes_and_cover_everything(sample):
    batches = sample.batches(0)
    assert all(len(b) == 8 for b in batches[:-1])
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert len(flat) >= len(sample.eligible()) - 7  # only a last partial batch may be dropped
    # Batches are ordered by a seeded shuffle: same epoch -> same order, another epoch -> another.
    assert sample.batches(0) == batches and sample.batches(1) != batches
    # Grouping by (prepared) size keeps padding small: most batches share one padded height.
    same_height = sum(len({-(-sample.prepared_size(i)[0] // 16) for i in b}) == 1 for b in batches)
    assert same_height / len(batches) > 0.8


def test_prepare_data_tensors(sample):
    batch = sample.prepare_data(sample.batches(0)[0])
    b, c, h, w = batch.images.shape
    assert (b, c) == (8, 1) and h % 16 == 0 and w % 16 == 0
    assert batch.ids.shape[0] == 8 and (batch.ids[:, 0] == BOS_ID).all()
    # White background normalizes to (1 - MEAN) / STD: padding is white, not black.
    assert batch.images[0, 0, -1, -1].item() == pytest.approx((1 - MEAN) / STD)
    assert sample.tokenizer.decode(batch.ids) == batch.labels


def test_iteration_seed_api(sample):
    sample.update(batchsize=32, keep_smaller_batches=True)
    try:
        batches = list(sample)
        assert sum(len(b.labels) for b in batches) == len(sample.eligible())
        assert sample.epoch == 1
    finally:
        sample.update(batchsize=8, keep_smaller_batches=False)


def test_save_load_combine(sample, tmp_path, tokenizer_path):
    path = tmp_path / "sample.pkl"
    sample.save(path)
    again = Im2LatexDataset.load(path, tokenizer=tokenizer_path)
    assert again.labels == sample.labels and again.paths == sample.paths
    assert again.image_path(3) == sample.image_path(3)
    again.combine(sample)
    assert len(again) == 2 * len(sample)
    assert again.image_path(len(sample) + 3) == sample.image_path(3)


def test_dataloader_with_workers_matches_main_process(sample):
    sample.update(test=False)  # augmentation on: seeds per (epoch, batch) must make workers agree
    try:
        ds = BatchDataset(sample, epoch=0, start=2)
        direct = [ds[k] for k in range(3)]
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, collate_fn=lambda b: b)
        for k, batch in enumerate(loader):
            if k == 3:
                break
            assert torch.equal(batch.images, direct[k].images)
            assert batch.labels == direct[k].labels
    finally:
        sample.update(test=True)


def test_train_transform_changes_pixels_deterministically(sample):
    from pix2tex.dataset.dataset import load_image_gray

    image = load_image_gray(sample.image_path(0))
    t = train_transform()

    def run(seed):
        t.set_random_seed(seed)
        return t(image=image)["image"]

    first, again = run(1), run(1)
    assert first.dtype == image.dtype and first.ndim == 2
    assert first.shape == again.shape and (first == again).all()
    others = [run(seed) for seed in range(2, 8)]
    assert any(o.shape != image.shape or (o != image).any() for o in others)
    assert any(o.shape != first.shape or (o != first).any() for o in others)


def _dataset_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m pix2tex.dataset.dataset ARGS``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pix2tex.dataset.dataset", *args], cwd=REPO,
                          capture_output=True, text=True)


def _copy_images(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    images = tmp_path / "images"
    images.mkdir()
    rows = read_labels(SAMPLE / "labels.tsv")[:n]
    for rel, _ in rows:
        shutil.copy(SAMPLE / rel, images / Path(rel).name)
    return images, [f"{Path(rel).name}\t{latex}" for rel, latex in rows]


def test_bad_inputs_are_left_out_and_labels_stay_aligned(tmp_path, capsys):
    images, lines = _copy_images(tmp_path, 4)
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image")
    good = (images / Path(lines[0].split("\t")[0])).read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (80, 24), 255).save(images / "blank.png")  # what \phantom{x} typesets to
    lines += ["zero.png\tx", "text.png\ty", "truncated.png\tz", "missing.png\tw",
              f"{lines[1].split(chr(9))[0]}\t   ", "../../etc/passwd\tv", "blank.png\tu"]
    labels = tmp_path / "labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    ds = Im2LatexDataset(labels, images)
    assert len(ds) == 4
    assert ds.skipped == {"empty file": 1, "not an image": 1, "missing image": 1, "empty label": 1,
                          "image path outside the image folder": 1, "blank image": 1,
                          **{k: 1 for k in ds.skipped if k.startswith("unreadable")}}
    assert any(k.startswith("unreadable image") for k in ds.skipped)
    for i in range(4):  # every kept image still carries its own label
        name, latex = lines[i].split("\t")
        assert ds.paths[i] == name and ds.labels[i] == normalize(latex)
    err = capsys.readouterr().err
    assert "labels.tsv:5: empty file; left out" in err


def test_crafted_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "pix2tex-dataset", "x": Exploit()}))
    with pytest.raises(DatasetError, match=r"opcode STACK_GLOBAL at byte \d+ is not plain data"):
        Im2LatexDataset.load(path)
    assert not marker.exists()
    # The unpickler refuses it as well, without the opcode check in front of it.
    from pix2tex.dataset.dataset import _PlainUnpickler

    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load subprocess.call"):
        _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    assert not marker.exists()
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x05junk")
    with pytest.raises(DatasetError, match="junk.pkl"):
        load_pickle(tmp_path / "junk.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DatasetError, match="not a pix2tex dataset file"):
        Im2LatexDataset.load(tmp_path / "list.pkl")


@pytest.mark.slow
def test_cli_tokenizer_and_dataset(tmp_path):
    images, lines = _copy_images(tmp_path, 20)
    labels = tmp_path / "labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    run = _dataset_cli
    tok = tmp_path / "tokenizer.json"
    r = run("-e", str(labels), "-s", "120", "-o", str(tok))
    assert r.returncode == 0, r.stderr
    assert LatexTokenizer.load(tok).vocab_size <= 120
    out = tmp_path / "train.pkl"
    r = run("-i", str(images), "-e", str(labels), "-o", str(out), "--tokenizer", str(tok))
    assert r.returncode == 0, r.stderr
    assert "20 samples" in r.stdout
    assert len(Im2LatexDataset.load(out)) == 20
    r = run("-i", str(tmp_path / "nope"), "-e", str(labels), "-o", str(out))
    assert r.returncode == 2 and r.stderr.strip().endswith("image folder not found")


def test_train_transform_uses_no_deprecated_arguments(sample):
    import warnings

    from pix2tex.dataset.dataset import load_image_gray

    image = load_image_gray(sample.image_path(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warns about deprecated or unknown arguments
        t = train_transform()
        for seed in range(20):
            t.set_random_seed(seed)
            t(image=image)


def test_train_transform_never_draws_dark_borders():
    """Geometric transforms fill the space they uncover with white (paper), never with black lines."""
    import albumentations as A
    import numpy as np

    image = np.full((60, 200), 255, np.uint8)
    image[20:40, 20:180] = 0  # ink well inside a white margin

    def leaves(t):
        for child in t.transforms:
            yield from leaves(child) if isinstance(child, A.OneOf) else [child]

    for transform in leaves(train_transform()):
        transform.p = 1.0
        single = A.Compose([transform])
        for seed in range(10):
            single.set_random_seed(seed)
            out = single(image=image)["image"]
            edges = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
            assert edges.min() > 128, f"{type(transform).__name__} darkens the image edge (seed {seed})"


def test_requirements_txt_matches_pyproject():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["train"])
    lines = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert set(lines) == wanted


def test_prepared_size_predicts_the_model_input(sample):
    # Bucketing relies on it: the size estimated at build time matches what prepare_data makes.
    for i in range(0, 40, 4):
        h, w = sample.prepared_size(i)
        image = sample.prepare_data([i]).images
        assert abs(image.shape[2] - h) <= 16 + 4 and abs(image.shape[3] - w) <= 16 + 8


def test_glyph_scale_trains_on_larger_glyphs(sample, tmp_path):
    """glyph_scale 1.2 prepares every image with glyphs 1.2x as tall; the sampler buckets by that
    size (and leaves out what no longer fits), and the setting survives save and load."""
    larger = Im2LatexDataset.load_dict(sample.to_dict())
    larger.update(glyph_scale=1.2)
    larger.set_tokenizer(sample.tokenizer)
    wide = [i for i in range(40) if sample.glyphs[i]][:8]
    for i in wide:
        h, w = larger.prepared_size(i)
        base_h, base_w = sample.prepared_size(i)
        # prepared sizes include fixed margins; the ink inside them grows by the scale
        assert (w - 8) / (base_w - 8) == pytest.approx(1.2, rel=0.06)
        image = larger.prepare_data([i]).images
        assert abs(image.shape[2] - h) <= 16 + 4 and abs(image.shape[3] - w) <= 16 + 8
        # the ink itself: columns with any dark pixel, in the batch's normalized image
        ink = lambda x: int((x[0, 0] < x[0, 0].max() - 0.5).any(axis=0).sum())  # noqa: E731
        assert ink(image.numpy()) / ink(sample.prepare_data([i]).images.numpy()) == pytest.approx(1.2, rel=0.1)
    assert len(larger.eligible()) < len(sample.eligible())  # the widest formulas no longer fit 800 px
    larger.save(tmp_path / "larger.pkl")
    assert Im2LatexDataset.load(tmp_path / "larger.pkl").glyph_scale == 1.2
    assert Im2LatexDataset.load_dict(sample.to_dict()).glyph_scale == 1.0
    old = sample.to_dict()
    del old["settings"]["glyph_scale"]  # written before the setting existed
    assert Im2LatexDataset.load_dict(old).glyph_scale == 1.0
    for bad in (3, "1.2", True):
        with pytest.raises(ConfigError, match="^glyph_scale must be a number from 0.5 to 2.0"):
            larger.update(glyph_scale=bad)


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory, tokenizer_path):
    """40 real images laid out as create_data.sh renders: 10 in render/a, 30 in render/b."""
    root = tmp_path_factory.mktemp("corpora")
    lines = []
    for k, (rel, latex) in enumerate(read_labels(SAMPLE / "labels.tsv")[:40]):
        folder = root / "render" / ("a" if k < 10 else "b") / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / rel, folder / Path(rel).name)
        lines.append(f"{(folder / Path(rel).name).relative_to(root)}\t{latex}")
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return Im2LatexDataset(root / "train.tsv", root, tokenizer=tokenizer_path, batchsize=4,
                           max_dimensions=(800, 160), keep_smaller_batches=True)


def _corpus_counts(ds: Im2LatexDataset, epoch: int = 0) -> dict[str, int]:
    flat = [i for b in ds.batches(epoch) for i in b]
    return {name: sum(ds.corpus(i) == name for i in flat) for name in ("a", "b")}


def test_corpus_weights_repeat_and_thin_out_corpora(two_corpora, tmp_path):
    ds = two_corpora
    assert ds.corpus_sizes() == {"a": 10, "b": 30}
    n_a = sum(ds.corpus(i) == "a" for i in ds.eligible())
    n_b = len(ds.eligible()) - n_a
    plain = ds.batches(0)
    try:
        # Weight 1 (or a corpus not named) leaves the epoch exactly as it was.
        ds.update(corpus_weights={"a": 1, "elsewhere": 2})
        assert ds.batches(0) == plain
        ds.update(corpus_weights={"a": 3})
        assert _corpus_counts(ds) == {"a": 3 * n_a, "b": n_b}
        ds.update(corpus_weights={"a": 0})
        assert _corpus_counts(ds) == {"a": 0, "b": n_b}
        # A fractional weight keeps each sample with that probability, drawn anew each epoch.
        ds.update(corpus_weights={"b": 0.5})
        kept = [_corpus_counts(ds, epoch)["b"] for epoch in range(4)]
        assert all(0.2 * n_b < k < 0.8 * n_b for k in kept) and len(set(kept)) > 1
        assert kept[0] == _corpus_counts(ds, 0)["b"]  # still a pure function of the epoch
        # Copies of a sample that meet in one batch are augmented differently (and reproducibly).
        assert not ds.test
        # (Some seeds draw no augmentation at all for either copy, hence several seeds.)
        pairs = [ds.prepare_data([0, 0], augment_seed=seed).images for seed in range(6)]
        assert sum(not torch.equal(pair[0], pair[1]) for pair in pairs) >= 3
        assert torch.equal(ds.prepare_data([0, 0], augment_seed=2).images, pairs[2])
        ds.update(corpus_weights={"a": 2.5})
        assert 2 * n_a < _corpus_counts(ds)["a"] <= 3 * n_a
        # The weights travel with the saved dataset.
        ds.save(tmp_path / "w.pkl")
        assert Im2LatexDataset.load(tmp_path / "w.pkl").corpus_weights == {"a": 2.5}
        with pytest.raises(DatasetError, match="weight of 'a' must be a number >= 0"):
            ds.update(corpus_weights={"a": -1})
    finally:
        ds.update(corpus_weights={})


def test_training_refuses_weights_for_a_missing_corpus(two_corpora, tmp_path, tokenizer_path):
    from pix2tex.config import ConfigError, config_from_dict
    from pix2tex.train import load_datasets

    two_corpora.save(tmp_path / "train.pkl")
    settings = {"data": str(tmp_path / "train.pkl"), "tokenizer": str(tokenizer_path), "num_tokens": 600,
                "max_width": 800, "max_height": 160, "batchsize": 4}
    train_set, _, _ = load_datasets(config_from_dict({**settings, "corpus_weights": {"a": 2}}))
    assert train_set.corpus_weights == {"a": 2.0}
    with pytest.raises(ConfigError, match=r"no training image belongs to corpus 'im2latex' \(.*has: a, b\)"):
        load_datasets(config_from_dict({**settings, "corpus_weights": {"im2latex": 2}}))


@pytest.mark.slow
@pytest.mark.tex
def test_create_data_writes_per_corpus_validation_and_test_sets(tmp_path):
    # The shell recipe end to end on two small real corpora: rendered with TeX, split, tokenized.
    from tests.helpers import read_formulas

    formulas = tmp_path / "formulas"
    formulas.mkdir()
    for name in ("im2latex_val", "chem_units"):
        (formulas / f"{name}.txt").write_text("\n".join(read_formulas(name, 40)) + "\n")
    env = {**os.environ, "PYTHON": sys.executable, "RENDER_ARGS": "--dpi 100 100 --fonts cm --workers 2",
           "SPLIT_ARGS": "--val 0.25 --test 0.25", "GLYPH_ESTIMATOR": "stroke"}
    result = subprocess.run(["bash", str(REPO / "create_data.sh"), str(formulas), str(tmp_path / "data"), "300"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    data = tmp_path / "data"
    for split in ("valid", "test"):
        whole = Im2LatexDataset.load(data / f"{split}.pkl")
        parts = {name: Im2LatexDataset.load(data / f"{split}_{name}.pkl") for name in ("im2latex_val", "chem_units")}
        for name, part in parts.items():
            assert len(part) > 0 and set(part.corpus_sizes()) == {name}
        assert sorted(whole.labels) == sorted(parts["im2latex_val"].labels + parts["chem_units"].labels)
    assert Im2LatexDataset.load(data / "train.pkl").corpus_sizes().keys() == {"im2latex_val", "chem_units"}
    assert {Im2LatexDataset.load(p).glyph_estimator for p in data.glob("*.pkl")} == {"stroke"}


def test_max_label_tokens_keeps_only_short_labels_for_a_curriculum(sample):
    lengths = sample.tokenizer.lengths(sample.labels)
    everything = sample.eligible()
    sample.update(max_label_tokens=30)
    try:
        short = sample.eligible()
        assert short and len(short) < len(everything)
        assert all(lengths[i] <= 30 for i in short)
        assert set(short) == {i for i in everything if lengths[i] <= 30}
        assert {i for b in sample.batches(0) for i in b} <= set(short)
    finally:
        sample.update(max_label_tokens=0)
    assert sample.eligible() == everything


def test_batches_carry_each_images_size_inside_the_canvas(sample):
    batch = sample.prepare_data(sample.batches(0)[0])
    assert batch.sizes.shape == (len(batch.labels), 2)
    _, _, height, width = batch.images.shape
    assert (batch.sizes[:, 0] <= height).all() and (batch.sizes[:, 1] <= width).all()
    assert int(batch.sizes[:, 1].max()) > width - 16  # the widest image fills the canvas up to its padding


# Hostile dataset files (issue 16): each is loaded in a child process with 1 GiB of address space
# and a time limit; it must end in a one-line DatasetError, fast, not in a crash or a hang.
_HOSTILE_LOADER = """
import resource, sys
from pix2tex.dataset.dataset import DatasetError, Im2LatexDataset
# Imports map large libraries; what the load itself may add is 1 GiB of address space.
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
try:
    Im2LatexDataset.load(sys.argv[1])
except DatasetError as exc:
    print("DatasetError:", exc)
    sys.exit(0)
print("loaded")
"""


def _bytes_bomb() -> bytes:
    # PROTO 4, BINBYTES8 declaring 100 GiB, STOP: 14 bytes
    return b"\x80\x04" + b"\x8e" + (100 * 2**30).to_bytes(8, "little") + b"."


def _reference_bomb() -> bytes:
    # 'labels' is a list holding one list ten times, 40 levels deep: about 1 KB of pickle that
    # would be 10**40 strings if anything walked or formatted it.
    level: list = []
    for _ in range(40):
        level = [level] * 10
    return pickle.dumps({"format": "pix2tex-dataset", "settings": {}, "roots": [], "paths": [], "root_ids": [],
                         "widths": [], "heights": [], "glyphs": [], "labels": level}, protocol=4)


def _nesting_bomb() -> bytes:
    return b"\x80\x04" + b"](" * 200_000 + b"e" * 200_000 + b"."


@pytest.mark.parametrize("name,payload", [("bytes_bomb", _bytes_bomb), ("reference_bomb", _reference_bomb),
                                          ("nesting_bomb", _nesting_bomb)])
def test_hostile_dataset_files_fail_fast_with_one_line(tmp_path, name, payload):
    import sys
    import time

    path = tmp_path / f"{name}.pkl"
    path.write_bytes(payload())
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _HOSTILE_LOADER, str(path)], capture_output=True, text=True,
                            timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert time.perf_counter() - start < 30
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("DatasetError:") and str(path) in lines[0], result.stdout[:500]


def test_length_pools_cut_padding_and_keep_every_sample(sample):
    lengths = sample.tokenizer.lengths(sample.labels)
    sample.update(batchsize=8, shuffle=True, test=True, length_pool=0)
    plain = sample.batches(3)
    sample.update(length_pool=4)
    try:
        pooled = sample.batches(3)
        assert sorted(i for b in pooled for i in b) == sorted(i for b in plain for i in b)

        def waste(batches):
            used = sum(lengths[i] for b in batches for i in b)
            return 1 - used / sum(max(lengths[i] for i in b) * len(b) for b in batches)

        assert waste(pooled) < waste(plain)  # (real data: 51 % of target tokens padding -> 12 %, RESULTS)
        assert pooled == sample.batches(3) and pooled != sample.batches(4)  # seeded, and new each epoch
    finally:
        sample.update(length_pool=0)
    assert sample.batches(3) == plain  # off: the order earlier runs used


def test_augmentation_survives_renders_a_few_pixels_wide(tmp_path, tokenizer_path):
    """A render of "|" or "." alone is a few pixels wide; GridDistortion divided by zero on such an
    image and killed a training run's DataLoader worker.  Every augmentation seed must give a batch."""
    from PIL import Image as PILImage

    (tmp_path / "images").mkdir()
    PILImage.new("L", (2, 5), 0).save(tmp_path / "images" / "0.png")
    (tmp_path / "labels.tsv").write_text("images/0.png\t|\n")
    ds = Im2LatexDataset(tmp_path / "labels.tsv", tmp_path, tokenizer=tokenizer_path, test=False)
    for seed in range(100):  # GridDistortion runs with p=0.15: some of these seeds apply it
        batch = ds.prepare_data([0], augment_seed=seed)
        assert batch.images.shape[0] == 1


def test_dataset_files_without_glyph_heights_still_load(sample):
    data = sample.to_dict()
    del data["glyphs"]  # written before glyph heights were kept
    ds = Im2LatexDataset.load_dict(data)
    assert len(ds) == len(sample) and ds.glyphs == (None,) * len(sample)


def test_glyph_heights_remeasured_with_another_estimator(tmp_path):
    """--remeasure writes the same samples with every glyph height measured the new way, and says how;
    a dataset built with an estimator stores its heights; old files read as "soft"."""
    from pix2tex.preprocess import crop_to_content, estimate_glyph_height

    images, lines = _copy_images(tmp_path, 12)
    labels = tmp_path / "labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    run = _dataset_cli
    assert run("-i", str(images), "-e", str(labels), "-o", str(tmp_path / "soft.pkl")).returncode == 0
    soft = Im2LatexDataset.load(tmp_path / "soft.pkl")
    assert soft.glyph_estimator == "soft"
    r = run("--remeasure", str(tmp_path / "soft.pkl"), "--glyph-estimator", "stroke", "-o", str(tmp_path / "s.pkl"))
    assert r.returncode == 0, r.stderr
    assert "12 samples, glyphs measured with stroke" in r.stdout
    stroke = Im2LatexDataset.load(tmp_path / "s.pkl")
    assert stroke.glyph_estimator == "stroke" and stroke.labels == soft.labels and stroke.paths == soft.paths
    expected = [estimate_glyph_height(crop_to_content(load_image_gray(stroke.image_path(i))), "stroke")
                for i in range(len(stroke))]
    assert list(stroke.glyphs) == expected and stroke.glyphs != soft.glyphs
    built = Im2LatexDataset(labels, images, glyph_estimator="stroke")
    assert built.glyphs == stroke.glyphs
    data = soft.to_dict()
    del data["settings"]["glyph_estimator"]  # written before the choice existed
    assert Im2LatexDataset.load_dict(data).glyph_estimator == "soft"
    data["settings"]["glyph_estimator"] = "sharp"
    with pytest.raises(DatasetError, match="glyph_estimator must be one of soft, stroke, stroke_capped, got 'sharp'"):
        Im2LatexDataset.load_dict(data, source="x.pkl")
    with pytest.raises(TypeError, match="unknown setting 'glyph_estimator'"):
        soft.update(glyph_estimator="stroke")  # the heights would not match the name
    r = run("--remeasure", str(tmp_path / "soft.pkl"), "-e", str(labels), "-o", str(tmp_path / "x.pkl"))
    assert r.returncode == 2 and "give one of -e" in r.stderr


def test_combined_datasets_keep_their_image_folders_and_corpora(tmp_path):
    """--combine writes one training set whose samples still load from their own folders and are
    told apart by corpus; datasets measured with different glyph estimators are refused."""
    run = _dataset_cli
    parts = []
    for name, n, estimator in (("papers", 5, "stroke"), ("school", 3, "stroke"), ("other", 2, "soft")):
        folder = tmp_path / name
        folder.mkdir()
        _, lines = _copy_images(folder, n)
        # Paths relative to the image folder name the corpus: <corpus>/images/<file>.
        (folder / "labels.tsv").write_text("".join(f"{name}/images/{line}\n" for line in lines))
        parts.append(tmp_path / f"{name}.pkl")
        r = run("-i", str(tmp_path), "-e", str(folder / "labels.tsv"), "--glyph-estimator", estimator,
                "-o", str(parts[-1]))
        assert r.returncode == 0, r.stderr
    r = run("--combine", str(parts[0]), str(parts[1]), "-o", str(tmp_path / "both.pkl"))
    assert r.returncode == 0, r.stderr
    assert "8 samples (papers 5, school 3)" in r.stdout
    both = Im2LatexDataset.load(tmp_path / "both.pkl")
    assert both.glyph_estimator == "stroke" and len(both.roots) == 2  # one per part, though they are equal
    assert both.corpus_sizes() == {"papers": 5, "school": 3}
    assert all(both.image_path(i).is_file() for i in range(len(both)))
    parts_labels = [list(Im2LatexDataset.load(p).labels) for p in parts[:2]]
    assert list(both.labels) == parts_labels[0] + parts_labels[1]
    r = run("--combine", str(parts[0]), str(parts[2]), "-o", str(tmp_path / "mixed.pkl"))
    assert r.returncode == 2 and "other.pkl: glyphs measured with 'soft'" in r.stderr
    assert not (tmp_path / "mixed.pkl").exists()

