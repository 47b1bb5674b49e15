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


def test_a_dataset_file_with_columns_out_of_step_is_refused():
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


# Computed with the code before SampleTable and BatchSampler existed (commit c6e87b3): a run that
# resumes across a change of this module must get the same batches, so any change to the order is
# a deliberate one, made here.
GOLDEN = {"eligible": [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 14, 15, 18, 19, 20, 21, 22, 23, 27, 29, 30, 32, 33, 34, 35, 40, 41, 42, 44, 45, 46, 47], "epoch0": [[2, 2, 42, 42, 3], [11], [34, 21, 21, 22, 11], [5, 45, 45, 4, 44], [19, 6, 7, 46, 47], [0, 40, 1, 41, 41], [3, 20, 20, 10, 5], [44, 32, 32, 33, 33], [27, 14, 14, 15, 15], [29, 29, 30, 30, 18], [47, 35, 35, 23, 23]], "epoch1": [[47, 47, 35, 35, 23], [23, 27, 14, 14, 15], [29, 29, 30, 18, 18], [0, 40, 1, 41, 41], [19, 6, 6, 7, 46], [45, 4, 44, 44, 32], [15, 2, 2, 42, 3], [20, 20, 10, 5, 5], [22, 11, 11], [32, 33, 33, 34, 21]]}  # noqa: E501 (recorded data, one line)


def test_batch_order_is_the_one_runs_were_started_with():
    n = 48
    data = {"format": "pix2tex-dataset", "version": 1, "roots": ["/r"], "root_ids": [0] * n,
            "paths": [f"render/{'abc'[k % 3]}/images/{k:07d}.png" for k in range(n)],
            "heights": [12 + (k * 7) % 40 for k in range(n)], "widths": [30 + (k * 53) % 700 for k in range(n)],
            "glyphs": [None if k % 5 == 0 else 8.0 + (k % 4) for k in range(n)],
            "labels": [f"x_{k}" for k in range(n)], "skipped": {}, "tokenizer": None,
            "settings": {"batchsize": 5, "seed": 7, "max_dimensions": [640, 64], "min_dimensions": [32, 32],
                         "patch_size": 16, "keep_smaller_batches": True, "corpus_weights": {"a": 1.5, "c": 2},
                         "length_pool": 2, "max_seq_len": 45}}
    ds = Im2LatexDataset.load_dict(data)
    lengths = [(k * 29) % 50 for k in range(n)]  # label lengths in tokens, as a tokenizer would give
    assert ds.sampler.eligible(ds.samples, lengths) == GOLDEN["eligible"]
    assert ds.sampler.batches(ds.samples, lengths, 0) == GOLDEN["epoch0"]
    assert ds.sampler.batches(ds.samples, lengths, 1) == GOLDEN["epoch1"]


@pytest.mark.parametrize("change, message", [
    ({"settings": {"batchsize": 0}}, "setting 'batchsize' must be at least 1"),
    ({"settings": {"patch_size": 0}}, "setting 'patch_size' must be at least 1"),
    ({"settings": {"length_pool": -1}}, "setting 'length_pool' must not be negative"),
    ({"settings": {"max_dimensions": [0, 64]}}, "setting 'max_dimensions' must be two positive integers"),
    ({"settings": {"augment_level": "wild"}}, "setting 'augment_level' must be 'light' or 'full'"),
    ({"glyphs": [float("nan"), None, None]}, "field 'glyphs' must hold positive glyph heights or null"),
    ({"widths": [0, 100, 100]}, "field 'widths' must hold positive sizes"),
])
def test_dataset_files_with_values_out_of_range_are_refused(change, message):
    ds = Im2LatexDataset()
    ds.samples = table(3)
    data = ds.to_dict()
    data.update({k: v for k, v in change.items() if k != "settings"})
    data["settings"].update(change.get("settings", {}))
    with pytest.raises(DatasetError, match=f"^<x>: {message}$"):
        Im2LatexDataset.load_dict(data, source="<x>")
