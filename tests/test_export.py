"""ONNX export and the onnxruntime engine: same memory, same tokens as PyTorch on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2tex.checkpoint import CheckpointError, load_model_folder, save_model_folder
from pix2tex.config import ModelConfig
from pix2tex.export import ExportError, export_onnx, main
from pix2tex.models.model import get_model
from pix2tex.normalize import normalize
from pix2tex.onnx_engine import CROSS_CACHE, DECODER, ENCODER, MANIFEST, OnnxModel, load_onnx_folder
from pix2tex.preprocess import prepare, to_batch
from pix2tex.tokenizer import EOS_ID, PAD_ID, LatexTokenizer
from tests.helpers import SAMPLE, read_formulas

CFG = ModelConfig(backbone_layers=[1, 1], dim=32, encoder_depth=1, heads=2, num_layers=2, num_tokens=128,
                  patch_size=16, max_height=64, max_width=256, max_seq_len=40)
STEPS = 20
# Random weights rarely choose EOS; scaling its output row makes some sequences end early and
# others not, so both engines must stop (and PAD) each row at the same step.
EOS_BOOST = 1.15


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer() -> LatexTokenizer:
    return LatexTokenizer.train([normalize(f) for f in read_formulas("chem_units", 300)], CFG.num_tokens)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """The first 8 im2latex sample images as model input (several sizes up to 64 x 256)."""
    lines = (SAMPLE / "labels.tsv").read_text(encoding="utf-8").splitlines()[:8]
    return [prepare(Image.open(SAMPLE / line.split("\t")[0]), patch_size=CFG.patch_size, max_height=CFG.max_height,
                    max_width=CFG.max_width) for line in lines]


def _export(root: Path, tokenizer: LatexTokenizer, eos_boost: float = 1.0):
    """Save a seeded random model as a model folder, export it; (PyTorch model, ONNX model, export dir)."""
    torch.manual_seed(1)
    model = get_model(CFG).eval()
    with torch.no_grad():
        model.decoder.net.to_logits.weight[EOS_ID] *= eos_boost
    save_model_folder(root / "model", model, CFG, tokenizer, {"step": 5})
    out = export_onnx(root / "model", root / "onnx")
    return load_model_folder(root / "model")[0], load_onnx_folder(out, threads=1)[0], out


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tokenizer):
    return _export(tmp_path_factory.mktemp("plain"), tokenizer)


@pytest.fixture(scope="module")
def eos_early(tmp_path_factory, tokenizer):
    return _export(tmp_path_factory.mktemp("eos"), tokenizer, EOS_BOOST)


def _batches(images: list[np.ndarray]) -> list[np.ndarray]:
    """Three single images of different sizes and one padded batch of all eight (the ONNX engine's
    input; ``torch.from_numpy`` of each is PyTorch's)."""
    sizes, singles = set(), []
    for im in images:
        if im.shape not in sizes and len(singles) < 3:
            sizes.add(im.shape)
            singles.append(to_batch([im], CFG.patch_size))
    assert len(singles) == 3
    return singles + [to_batch(images, CFG.patch_size)]


def test_export_folder_is_self_contained(plain, tokenizer):
    _, onnx_model, out = plain
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ENCODER, CROSS_CACHE, DECODER, MANIFEST, "config.yaml", "tokenizer.json", "meta.json"])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["layers"] == ["self", "cross", "self", "cross"]
    assert max(manifest["max_abs_diff"].values()) < 1e-4
    model, cfg, tok, meta = load_onnx_folder(out)
    assert cfg == CFG and tok.to_str() == tokenizer.to_str() and meta == {"step": 5}
    assert isinstance(model, OnnxModel) and onnx_model.cfg == CFG
    assert not list(out.parent.glob(".onnx.*"))  # no temporary folder left beside it


def test_encoder_matches_pytorch(plain, images):
    model, onnx_model, _ = plain
    for x in _batches(images):
        with torch.no_grad():
            expected = model.encode(torch.from_numpy(x)).numpy()
        got = onnx_model.encode(x)
        assert got.shape == expected.shape == (x.shape[0], 1 + (x.shape[2] // 16) * (x.shape[3] // 16), CFG.dim)
        assert np.allclose(got, expected, atol=1e-4)


def test_greedy_tokens_identical_without_eos(plain, images):
    model, onnx_model, _ = plain
    for x in _batches(images):
        expected = model.generate(torch.from_numpy(x), max_new_tokens=STEPS)
        got = onnx_model.generate(x, max_new_tokens=STEPS)
        assert got.ids.shape == (x.shape[0], STEPS)
        assert np.array_equal(got.ids, expected.ids.numpy())
        assert np.allclose(got.logprob, expected.logprob.numpy(), atol=1e-4)


def test_greedy_tokens_identical_when_eos_ends_rows_early(eos_early, images):
    model, onnx_model, _ = eos_early
    batch = to_batch(images, CFG.patch_size)
    expected = model.generate(torch.from_numpy(batch), max_new_tokens=STEPS)
    got = onnx_model.generate(batch, max_new_tokens=STEPS)
    assert np.array_equal(got.ids, expected.ids.numpy())
    ended = (got.ids == EOS_ID).any(axis=1)
    assert 0 < int(ended.sum()) < len(images)  # some rows stop early, others run to the limit
    for row in got.ids[ended]:
        end = int(np.flatnonzero(row == EOS_ID)[0])
        assert end < STEPS - 1 and bool((row[end + 1:] == PAD_ID).all())
    # Alone (padded as in the batch), an image whose sequence ends stops the loop there, in both engines.
    for k in np.flatnonzero(ended).tolist():
        x = to_batch([images[k]], CFG.patch_size, height=batch.shape[2], width=batch.shape[3])
        single = onnx_model.generate(x, max_new_tokens=STEPS)
        assert np.array_equal(single.ids, model.generate(torch.from_numpy(x), max_new_tokens=STEPS).ids.numpy())
        assert single.ids.shape[1] < STEPS and int(single.ids[0, -1]) == EOS_ID


@pytest.mark.parametrize("which", ["plain", "eos_early"])
def test_beam_search_identical(which, request, images):
    model, onnx_model, _ = request.getfixturevalue(which)
    batch = to_batch(images[:4], CFG.patch_size)
    expected = model.beam_search(torch.from_numpy(batch), beam_size=3, max_new_tokens=STEPS)
    got = onnx_model.beam_search(batch, beam_size=3, max_new_tokens=STEPS)
    assert np.array_equal(got.ids, expected.ids.numpy())
    assert np.allclose(got.logprob, expected.logprob.numpy(), atol=1e-4)


def test_engine_rejects_bad_input(plain):
    _, onnx_model, out = plain
    with pytest.raises(ValueError, match="must be multiples of 16"):
        onnx_model.generate(np.zeros((1, 1, 40, 64), np.float32))
    with pytest.raises(ValueError, match="must be normalized floats"):
        onnx_model.generate(np.zeros((1, 1, 32, 64), np.uint8))
    with pytest.raises(ValueError, match="must be a numpy array"):
        onnx_model.generate(torch.zeros(1, 1, 32, 64))
    with pytest.raises(ValueError, match="one new token per row"):
        onnx_model.step(np.zeros((2, 2), np.int64), onnx_model.step.start(np.zeros((2, 5, CFG.dim), np.float32)))
    from pix2tex.inference import LatexOCR

    with pytest.raises(ValueError, match="CPU only"):
        LatexOCR(out, engine="onnx", device="cuda")


def test_export_of_missing_or_broken_model_folder_fails_in_one_line(tmp_path, capsys):
    assert main(["--onnx", str(tmp_path / "out"), "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a model folder" in err and err.count("\n") == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    (broken / "config.yaml").write_text("dim: 32\n")
    (broken / "tokenizer.json").write_text("{}")
    assert main(["--onnx", str(tmp_path / "out"), "--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # nothing half-written


def test_export_replaces_an_earlier_export_but_not_other_folders(plain, tmp_path):
    _, _, out = plain
    source = out.parent / "model"
    assert main(["--onnx", str(out), "--checkpoint", str(source)]) == 0  # re-export over itself
    assert load_onnx_folder(out)[3] == {"step": 5}
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an ONNX export"):
        export_onnx(source, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_loading_a_non_export_folder_fails_clearly(plain):
    _, _, out = plain
    with pytest.raises(CheckpointError, match="not an ONNX model folder"):
        load_onnx_folder(out.parent / "model")
    broken = out.parent / "broken_onnx"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / DECODER).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="decoder.onnx: unreadable ONNX graph"):
        load_onnx_folder(broken)


def test_bundled_model_reads_real_images_the_same_on_both_engines(tmp_path):
    """The graphs are traced from the lean step: on real images, whose readings end at different
    steps (finished rows leave the batch on both engines), ONNX gives PyTorch's LaTeX."""
    from pix2tex.inference import LatexOCR

    out = export_onnx(None, tmp_path / "onnx")
    paths = [str(SAMPLE / line.split("\t")[0])
             for line in (SAMPLE / "labels.tsv").read_text().splitlines()[:8]]
    torch_readings = [p.latex for p in LatexOCR(batch_size=1, engine="torch").predict(paths)]
    onnx_readings = [p.latex for p in LatexOCR(out, engine="onnx").predict(paths)]
    assert onnx_readings == torch_readings
    assert len({len(r.split()) for r in torch_readings}) > 3


def test_masked_model_exports_and_reads_like_torch_one_image_at_a_time(tmp_path, tokenizer):
    """A model trained with mask_padding (the recipe's) exports; LatexOCR's onnx engine reads such a
    model one image per batch (the graphs take no mask), and gives PyTorch's tokens."""
    import dataclasses

    from pix2tex.inference import LatexOCR

    cfg = dataclasses.replace(CFG, backbone_channels=[32, 64], stem_channels=16, backbone_norm="batch",
                              mask_padding=True)
    torch.manual_seed(2)
    save_model_folder(tmp_path / "model", get_model(cfg).eval(), cfg, tokenizer, {"step": 1})
    out = export_onnx(tmp_path / "model", tmp_path / "onnx")
    paths = [str(SAMPLE / line.split("\t")[0])
             for line in (SAMPLE / "labels.tsv").read_text(encoding="utf-8").splitlines()[:4]]
    torch_ocr = LatexOCR(tmp_path / "model", device="cpu", batch_size=4)
    onnx_ocr = LatexOCR(out, engine="onnx", threads=1, batch_size=4)
    assert onnx_ocr.batch_size == 1
    assert [p.latex for p in onnx_ocr.predict(paths)] == [p.latex for p in torch_ocr.predict(paths)]


def test_fixed_length_generation_matches_pytorch(eos_early, images):
    model, onnx_model, _ = eos_early
    batch = to_batch(images, CFG.patch_size)
    expected = model.generate(torch.from_numpy(batch), max_new_tokens=STEPS, stop_at_eos=False)
    got = onnx_model.generate(batch, max_new_tokens=STEPS, stop_at_eos=False)
    assert got.ids.shape == (len(images), STEPS)
    assert np.array_equal(got.ids, expected.ids.numpy()) and (got.ids == EOS_ID).any()  # EOS is just a token


def test_the_loop_rule_reads_numpy_and_torch_rows_alike():
    from pix2tex.decoding_rules import looping

    rows = [[7] * 40, [3, 4] * 20, list(range(40)), [9] * 8 + list(range(32))]
    assert looping(np.array(rows)).tolist() == looping(torch.tensor(rows)).tolist() == [True, True, False, False]
    assert looping(np.array([[7] * 10])) is None  # too short for any loop
