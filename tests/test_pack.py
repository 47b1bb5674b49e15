"""The packed training set for a lent GPU: one tar that trains from wherever it is extracted."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from pix2tex.dataset.dataset import Im2LatexDataset, load_image_gray
from pix2tex.pack import pack, unpack
from pix2tex.tokenizer import LatexTokenizer
from tests.helpers import SAMPLE


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    work = tmp_path_factory.mktemp("pack")
    full = Im2LatexDataset(SAMPLE / "labels.tsv", SAMPLE)
    full.save(work / "train.pkl")
    valid = Im2LatexDataset.load_dict(full.to_dict())
    valid.samples = full.samples.subset(range(20))
    valid.save(work / "valid.pkl")
    LatexTokenizer.train(full.labels, 300, kind="tokens").save(work / "tok.json")
    info = pack(work / "train.pkl", work / "tok.json", work / "pack.tar", valdata=work / "valid.pkl", max_mb=0.5)
    return work, full, info


def test_pack_respects_its_budget_and_round_trips(packed, tmp_path):
    work, full, info = packed
    assert 0 < info["train"] < len(full) and info["valid"] == 20
    assert info["bytes"] < 0.5 * 2**20 + 2**20  # images within budget, plus datasets and tokenizer
    target = unpack(work / "pack.tar", tmp_path / "x")
    train = Im2LatexDataset.load(target / "train.pkl", tokenizer=target / "tokenizer.json")
    assert len(train) == info["train"]
    by_name = {p.split("/")[-1]: k for k, p in enumerate(full.paths)}
    for i in range(len(train)):
        k = by_name[train.paths[i].split("/")[-1]]
        assert train.labels[i] == full.labels[k] and train.glyphs[i] == full.glyphs[k]
        assert np.array_equal(load_image_gray(train.image_path(i)), load_image_gray(full.image_path(k)))
    batch = train.prepare_data(train.batches(0)[0])
    assert batch.images.shape[0] == len(batch.labels) and batch.ids.shape[0] == len(batch.labels)
    assert train.tokenizer.kind == "tokens"
    assert Im2LatexDataset.load(target / "valid.pkl").labels == full.labels[:20]


def test_unpack_refuses_paths_leaving_the_folder(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        data = b"gotcha"
        member = tarfile.TarInfo("../outside.txt")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with pytest.raises(tarfile.TarError):
        unpack(evil, tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists()
