"""The sample table and the batch sampler, on their own (the dataset's face is in test_dataset.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pix2tex.dataset.dataset import DatasetError, Im2LatexDataset
from pix2tex.dataset.sampler import BatchSampler
from pix2tex.dataset.samples import SampleTable, Size
from pix2tex.preprocess import MARGIN


def table(n: int, root: str = "/a", corpus: str = "c", height: int = 20, width: int = 100) -> SampleTable:
    return SampleTable((root,), [0] * n, [f"render/{corpus}/images/{k:07d}.png" for k in range(n)],
                       [height] * n, [width] * n, [None] * n, [f"x_{k}" for k in range(n)])


def test_size_is_height_first_and_converts_the_seeds_width_height():
    assert Size.from_wh((672, 192)) == Size(height=192, width=672)
    assert table(1).prepared_size(0) == Size(20 + 2 * MARGIN, 100 + 2 * MARGIN)


def test_table_is_immutable_and_its_columns_stay_in_step():
    t = table(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.labels = ("y",)  # type: ignore[misc]
    assert isinstance(t.labels, tuple)
    with pytest.raises(ValueError, match="'labels' has 2 entries for 3 images"):
        dataclasses.replace(t, labels=["a", "b"])
    with pytest.raises(ValueError, match="root_ids"):
        dataclasses.replace(t, root_ids=[0, 0, 1])


def test_concat_keeps_each_tables_image_folders_and_subset_picks_rows():
    a, b = table(2, "/a", "one"), table(3, "/b", "two")
    both = a.concat(b)
    assert len(both) == 5 and both.roots == ("/a", "/b")
    assert both.image_path(1) == Path("/a/render/one/images/0000001.png")
    assert both.image_path(4) == Path("/b/render/two/images/0000002.png")
    assert both.corpus_sizes() == {"one": 2, "two": 3}
    picked = both.subset([4, 0])
    assert picked.labels == ("x_2", "x_0") and picked.image_path(0) == both.image_path(4)
    assert both.with_roots(["/c", "/d"]).image_path(4) == Path("/d/render/two/images/0000002.png")


def test_sampler_is_a_pure_function_of_settings_seed_and_epoch():
    t = table(40)
    sampler = BatchSampler(batchsize=8, seed=3, max_size=Size(192, 672))
    first = sampler.batches(t, None, 0)
    assert first == BatchSampler(batchsize=8, seed=3).batches(t, None, 0)
    assert first != sampler.batches(t, None, 1) and first != dataclasses.replace(sampler, seed=4).batches(t, None, 0)
    assert sorted(i for b in first for i in b) == list(range(40))


def test_sampler_filters_by_size_and_label_length_and_weighs_corpora():
    t = table(10, corpus="small").concat(table(10, corpus="big", width=2000))
    lengths = [5] * 15 + [50] * 5
    sampler = BatchSampler(batchsize=4, max_size=Size(192, 672), max_tokens=40)
    assert sampler.eligible(t, lengths) == list(range(10))  # the wide images are too wide
    assert sampler.eligible(t, None) == list(range(10))
    assert BatchSampler(max_size=Size(192, 4000), max_tokens=40).eligible(t, lengths) == list(range(15))
    tripled = dataclasses.replace(sampler, corpus_weights={"small": 3}, batchsize=5)
    flat = [i for b in tripled.batches(t, lengths, 0) for i in b]
    assert sorted(flat) == sorted(list(range(10)) * 3)


def test_length_pools_group_similar_label_lengths():
    t = table(64)
    lengths = [(k * 37) % 64 for k in range(64)]
    pooled = BatchSampler(batchsize=8, length_pool=8).batches(t, lengths, 0)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in pooled]
    assert max(spread) == 7  # one pool holds all 64: each batch is 8 neighbouring lengths


def test_a_dataset_file_with_columns_out_of_step_is_refused(tmp_path):
    ds = Im2LatexDataset()
    ds.samples = table(3)
    data = ds.to_dict()
    data["labels"] = data["labels"][:2]
    with pytest.raises(DatasetError, match="<x>: 'labels' has 2 entries for 3 images"):
        Im2LatexDataset.load_dict(data, source="<x>")
    data = ds.to_dict()
    data["root_ids"] = [0, 0, 5]
    with pytest.raises(DatasetError, match="<x>: 'root_ids' must index"):
        Im2LatexDataset.load_dict(data, source="<x>")
