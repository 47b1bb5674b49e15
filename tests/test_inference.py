"""LatexOCR and `pix2tex predict`: many inputs, bad files, output formats, engines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pix2tex.checkpoint import save_model_folder
from pix2tex.cli import expand_inputs
from pix2tex.config import ModelConfig
from pix2tex.inference import LatexOCR
from pix2tex.models.model import get_model
from pix2tex.normalize import normalize
from pix2tex.preprocess import prepare
from pix2tex.tokenizer import LatexTokenizer
from tests.helpers import REPO, SAMPLE, png_header_only, read_formulas

CFG = ModelConfig(backbone_layers=[1, 1], dim=32, encoder_depth=1, heads=2, num_layers=1, num_tokens=128,
                  max_height=128, max_width=640, max_seq_len=24)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "m"
    tok = LatexTokenizer.train([normalize(f) for f in read_formulas("chem_units", 500)], 128)
    with torch.random.fork_rng():  # the same weights whichever tests ran before
        torch.manual_seed(0)
        model = get_model(CFG)
    save_model_folder(folder, model, CFG, tok)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two real sample images under awkward names, and a corpus of broken files."""
    d = tmp_path_factory.mktemp("imgs")
    names = sorted(p.name for p in (SAMPLE / "images").iterdir())[:2]
    good = [d / "with space.png", d / "ünïcödé.png"]
    for name, target in zip(names, good, strict=True):
        shutil.copy(SAMPLE / "images" / name, target)
    bad = {
        "zero.png": b"",
        "text.png": b"just some text\n",
        "truncated.png": (SAMPLE / "images" / names[0]).read_bytes()[:300],
    }
    for name, data in bad.items():
        (d / name).write_bytes(data)
    (d / "bomb.png").write_bytes(png_header_only(20000, 20000))  # a decompression bomb
    Image.new("L", (300, 80), 255).save(d / "white.png")
    return good, [d / n for n in ("zero.png", "text.png", "truncated.png", "bomb.png", "white.png")]


def test_predict_many_with_errors_in_between(model_dir, images):
    good, bad = images
    ocr = LatexOCR(model_dir, device="cpu", batch_size=4)
    results = ocr.predict([good[0], *bad, good[1]])
    assert [r.source for r in results] == [str(p) for p in (good[0], *bad, good[1])]
    assert results[0].error is None and results[-1].error is None
    assert isinstance(results[0].latex, str) and results[0].confidence <= 0
    for r, path in zip(results[1:-1], bad, strict=True):
        assert r.latex is None and r.error.startswith(str(path)) and "\n" not in r.error
    assert "over the" in results[4].error  # the bomb is refused from its header
    with pytest.raises(ValueError, match="zero.png"):
        ocr(bad[0])
    assert ocr(Image.open(good[0])) == results[0].latex


def test_beam_and_batching_do_not_change_greedy_results(model_dir, images):
    # Images of one padded size batch without changing results (other sizes are padded with
    # white to the batch's size, which the encoder sees).
    good, _ = images
    same_size = [good[0], good[0], Image.open(good[0]).copy()]
    one = LatexOCR(model_dir, device="cpu", batch_size=1).predict(same_size)
    many = LatexOCR(model_dir, device="cpu", batch_size=8).predict(same_size)
    whole = LatexOCR(model_dir, device="cpu", batch_size=8, encoder_batch=8).predict(same_size)
    beam1 = LatexOCR(model_dir, device="cpu", beam=1, batch_size=8).predict(same_size)
    assert [r.latex for r in one] == [r.latex for r in many] == [r.latex for r in whole] == [r.latex for r in beam1]
    # by default the three images are encoded two and one at a time, then decoded together
    assert [r.confidence for r in many] == pytest.approx([r.confidence for r in one], abs=1e-4)
    assert [r.confidence for r in whole] == pytest.approx([r.confidence for r in one], abs=1e-4)
    beam3 = LatexOCR(model_dir, device="cpu", beam=3).predict(good)
    assert all(b.confidence >= -50 for b in beam3)


def test_expand_inputs(images, tmp_path):
    good, _ = images
    folder = good[0].parent
    listed, problems = expand_inputs([str(folder)])
    assert str(good[0]) in listed and all(p.endswith(".png") for p in listed) and problems == []
    assert expand_inputs([str(folder / "with*.png")]) == ([str(good[0])], [])
    assert expand_inputs(["-", str(tmp_path / "missing.png")]) == (["-", str(tmp_path / "missing.png")], [])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    sources, problems = expand_inputs([str(tmp_path / "empty"), str(good[0])])
    assert sources == [str(good[0])] and len(problems) == 1
    assert problems[0].startswith(f"{tmp_path / 'empty'}: no images in this folder")


def test_cli_predict_says_when_a_folder_holds_no_image(model_dir, images, tmp_path):
    good, _ = images
    (tmp_path / "empty").mkdir()
    r = _cli("predict", str(tmp_path / "empty"), "--checkpoint", str(model_dir))
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.decode().strip() == (f"error: {tmp_path / 'empty'}: no images in this folder "
                                         "(looked for .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff, .gif)")
    r = _cli("predict", str(tmp_path / "empty"), str(good[0]), "--checkpoint", str(model_dir))
    assert r.returncode == 1 and r.stdout.decode().strip() == LatexOCR(model_dir, device="cpu")(good[0])


def test_cli_predict_stdin_stops_reading_past_the_limit_and_names_it_once(model_dir, images):
    """Standard input is read to at most the limit plus one byte (an endless stream is refused, not
    buffered), and its errors name it "<stdin>" once."""
    from pix2tex.preprocess import MAX_FILE_BYTES

    good, _ = images
    with open("/dev/zero", "rb") as endless:
        r = subprocess.run([sys.executable, "-m", "pix2tex.cli", "predict", "-", str(good[0]), "--checkpoint",
                            str(model_dir)], cwd=REPO, capture_output=True, stdin=endless, timeout=300)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (f"error: <stdin>: more than {MAX_FILE_BYTES:,} bytes, over the "
                                         f"{MAX_FILE_BYTES:,}-byte limit for an image")
    assert r.stdout.decode().strip() == f"{good[0]}\t{LatexOCR(model_dir, device='cpu')(good[0])}"
    r = _cli("predict", "-", "--checkpoint", str(model_dir), stdin=b"not an image")
    assert r.returncode == 1
    error = r.stderr.decode().strip()
    assert error.startswith("error: <stdin>: ") and error.count("<stdin>") == 1 and "<bytes>" not in error


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pix2tex.cli", *args], cwd=REPO, capture_output=True,
                          input=stdin, timeout=300)


def test_cli_predict_reports_each_bad_file_and_exits_nonzero(model_dir, images):
    good, bad = images
    r = _cli("predict", str(good[0]), *map(str, bad), str(good[1]), "--checkpoint", str(model_dir),
             "--format", "json")
    assert r.returncode == 1
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert [x["path"] for x in lines] == [str(p) for p in (good[0], *bad, good[1])]
    assert lines[0]["latex"] is not None and lines[-1]["latex"] is not None
    errors = [x for x in r.stderr.decode().splitlines() if x.startswith("error: ")]
    assert len(errors) == len(bad)
    assert all(str(p) in e for p, e in zip(bad, errors, strict=True))


def test_cli_predict_stdin_text_format(model_dir, images):
    good, _ = images
    r = _cli("predict", "-", "--checkpoint", str(model_dir), stdin=good[0].read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    expected = LatexOCR(model_dir, device="cpu")(good[0])
    assert r.stdout.decode().strip() == expected


def test_cli_errors(tmp_path):
    r = _cli("predict", "x.png", "--checkpoint", str(tmp_path))
    assert r.returncode == 2 and "not a model folder" in r.stderr.decode()
    r = _cli("predict", "x.png", "--encoder-batch", "0")
    assert r.returncode == 2 and "--encoder-batch must be at least 1" in r.stderr.decode()
    r = _cli("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr.decode()


def _ink_width(prepared) -> int:
    columns = (prepared < 128).any(axis=0).nonzero()[0]
    return int(columns[-1] - columns[0]) + 1


def test_glyph_scale_enlarges_what_the_model_reads(model_dir, images, tmp_path):
    """A folder's glyph_scale (or the caller's) scales the prepared image; bad values are refused."""
    good, _ = images
    plain = LatexOCR(model_dir, device="cpu").prepare(good[0])
    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text(json.dumps({"glyph_scale": 1.5}))
    folder = LatexOCR(tmp_path / "m", device="cpu")
    assert folder.glyph_scale == 1.5
    assert _ink_width(folder.prepare(good[0])) == pytest.approx(1.5 * _ink_width(plain), rel=0.05)
    assert (LatexOCR(tmp_path / "m", device="cpu", glyph_scale=1.0).prepare(good[0]) == plain).all()
    assert LatexOCR(tmp_path / "m", device="cpu", glyph_scale=np.float32(1.25)).glyph_scale == 1.25
    with pytest.raises(ValueError, match="^glyph_scale must be a number from 0.5 to 2.0, got 3$"):
        LatexOCR(model_dir, device="cpu", glyph_scale=3)
    with pytest.raises(ValueError, match="glyph_scale needs rescale"):
        LatexOCR(model_dir, device="cpu", glyph_scale=1.2, rescale=False)
    r = _cli("predict", str(good[0]), "--checkpoint", str(model_dir), "--glyph-scale", "0")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "error: glyph_scale must be a number from 0.5 to 2.0, got 0.0"
    r = _cli("predict", str(good[0]), "--glyph-scale", "1.2", "--no-rescale")
    assert r.returncode == 2 and "--glyph-scale and --glyph-estimator need rescaling" in r.stderr.decode()
    from pix2tex.eval import main as eval_main

    with pytest.raises(SystemExit) as exit_:
        eval_main(["--data", "valid.pkl", "--glyph-scale", "1.2"])
    assert exit_.value.code == 2
    # An ONNX export carries the folder's glyph_scale to the onnx engine.
    from pix2tex.export import export_onnx

    export_onnx(str(tmp_path / "m"), tmp_path / "onnx")
    assert LatexOCR(tmp_path / "onnx", engine="onnx").glyph_scale == 1.5


def test_glyph_estimator_comes_from_the_folder_or_the_caller(model_dir, images, tmp_path):
    """The folder's glyph_estimator (or the caller's) measures the images; bad names are refused."""
    good, _ = images
    bold = Image.fromarray(cv2.erode(np.asarray(Image.open(good[0]).convert("L")), np.ones((2, 2), np.uint8)))
    c = LatexOCR(model_dir, device="cpu").config
    size = {"patch_size": c.patch_size, "max_height": c.max_height, "max_width": c.max_width}
    soft, stroke = (prepare(bold, glyph_estimator=m, **size) for m in ("soft", "stroke"))
    assert soft.shape != stroke.shape  # bold ink: "soft" measures taller glyphs, so it shrinks more
    assert LatexOCR(model_dir, device="cpu").glyph_estimator == "soft"
    assert (LatexOCR(model_dir, device="cpu").prepare(bold) == soft).all()
    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "meta.json").write_text(json.dumps({"glyph_estimator": "stroke"}))
    folder = LatexOCR(tmp_path / "m", device="cpu")
    assert folder.glyph_estimator == "stroke" and (folder.prepare(bold) == stroke).all()
    assert (LatexOCR(tmp_path / "m", device="cpu", glyph_estimator="soft").prepare(bold) == soft).all()
    with pytest.raises(ValueError, match="^glyph_estimator must be one of soft, stroke, stroke_capped, got 'sharp'$"):
        LatexOCR(model_dir, device="cpu", glyph_estimator="sharp")
    r = _cli("predict", str(good[0]), "--checkpoint", str(model_dir), "--glyph-estimator", "sharp")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "error: glyph_estimator must be one of soft, stroke, stroke_capped, got 'sharp'"
    r = _cli("predict", str(good[0]), "--glyph-estimator", "stroke", "--no-rescale")
    assert r.returncode == 2 and "--glyph-scale and --glyph-estimator need rescaling" in r.stderr.decode()


def test_reading_scales_and_consensus():
    from pix2tex.inference import consensus, reading_scales

    assert reading_scales(1.2, 1) == [1.2]
    assert [round(s, 3) for s in reading_scales(1.0, 6)] == [1.0, 0.893, 1.12, 0.797, 1.254, 0.712]
    assert consensus(["a + b", "a + b", "a - b", "x"]) == 0
    assert consensus(["a - b", "a + b", "a + b = c", "a + b"]) == 1  # the medoid, not the first
    assert consensus(["a", "b"]) == 0  # a tie: the reading at the model's own size


def test_multi_scale_reading_keeps_the_consensus_of_single_scale_readings(model_dir, images):
    from pix2tex.inference import consensus

    good, bad = images
    # Batches of one: this unmasked test model's readings would otherwise depend on their batch-mates.
    multi = LatexOCR(model_dir, device="cpu", scales=3, batch_size=1)
    results = multi.predict([good[0], bad[0], good[1]])
    assert [r.error is None for r in results] == [True, False, True]
    distinct = 0
    for image, result in zip(good, (results[0], results[2]), strict=True):
        singles = [LatexOCR(model_dir, device="cpu", glyph_scale=s, batch_size=1).predict([image])[0]
                   for s in multi.scales]
        chosen = singles[consensus([r.latex for r in singles])]
        assert (result.latex, result.confidence) == (chosen.latex, pytest.approx(chosen.confidence, abs=1e-5))
        distinct += len({r.latex for r in singles}) > 1
    assert distinct  # the sizes read differently, so the choice mattered
    for bad_scales in (0, 9, 2.5):
        with pytest.raises(ValueError, match="scales must be a whole number from 1 to 8"):
            LatexOCR(model_dir, device="cpu", scales=bad_scales)
    r = _cli("predict", str(good[0]), "--checkpoint", str(model_dir), "--scales", "2", "--no-rescale")
    assert r.returncode == 2 and r.stderr.decode().strip() == \
        "error: scales needs rescale: without it images are read at their own size"


def test_onnx_engine_reads_like_torch(model_dir, images, tmp_path):
    good, _ = images
    from pix2tex.export import export_onnx

    export_onnx(str(model_dir), tmp_path / "onnx")
    torch_out = LatexOCR(model_dir, device="cpu").predict(good)
    onnx_out = LatexOCR(tmp_path / "onnx", engine="onnx").predict(good)
    assert [r.latex for r in onnx_out] == [r.latex for r in torch_out]
    r = _cli("predict", str(good[0]), "--checkpoint", str(tmp_path / "onnx"), "--engine", "onnx")
    assert r.returncode == 0 and r.stdout.decode().strip() == torch_out[0].latex


@pytest.mark.tex
def test_bundled_model_and_demo():
    # The model that ships in the package loads without a checkpoint argument and `make demo`'s
    # module renders its formulas with TeX and reads every one of them.
    r = subprocess.run([sys.executable, "-m", "pix2tex.demo"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    predicted = [line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("  predicted: ")]
    assert len(predicted) == 8 and all(p.strip() for p in predicted)
    assert r.stdout.count("  reference: ") == 8
    assert r.stdout.strip().splitlines()[-1].startswith("8 rendered demo formulas: BLEU")


def test_prediction_does_not_import_training_only_libraries():
    """albumentations (augmentation) costs every `pix2tex predict` ~30 MB and a third of a second."""
    code = "import sys, pix2tex.inference, pix2tex.cli; print('albumentations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_bundled_model_reads_mixed_sizes_in_one_batch_as_alone(sample_dir):
    # A trained backbone's normalization turns the white padding beside a smaller image into
    # non-zero features that its convolutions see at the image's edges; masking attention alone
    # left readings dependent on batch-mates (2 of these 6 differed).  Images are encoded per canvas size.
    names = ["1cbb05a562", "66667cee5b", "ed164cc822", "e265f9dc6b", "60ee748793", "1015942522"]
    data = [(sample_dir / "images" / f"{n}.png").read_bytes() for n in names]
    ocr = LatexOCR(batch_size=len(data))
    arrays = [ocr.prepare(d) for d in data]
    assert len({a.shape for a in arrays}) == len(arrays)  # all sizes differ: all but one are padded
    together = ocr.read(arrays)
    alone = [ocr.read([a])[0] for a in arrays]
    assert [t for t, _, _ in together] == [t for t, _, _ in alone]
    assert [c for _, c, _ in together] == pytest.approx([c for _, c, _ in alone], abs=1e-4)


@pytest.mark.slow
def test_finished_rows_leave_the_batch_without_changing_readings(sample_dir):
    # The lean step drops sequences that reached EOS from its cache; the library's step keeps them.
    import torch

    from pix2tex.tokenizer import EOS_ID

    names = sorted((sample_dir / "images").glob("*.png"))[:8]
    ocr = LatexOCR(engine="torch")
    arrays = [ocr.prepare(p) for p in names]
    memory, mask = ocr._reader._encode_unpadded(arrays)
    decoder = ocr.model.decoder
    with torch.inference_mode():
        lean = decoder.generate(memory, memory_mask=mask)
        library = decoder.generate(memory, memory_mask=mask, fast=False)
    ends = {int((row == EOS_ID).nonzero()[0]) if (row == EOS_ID).any() else -1 for row in lean.ids}
    assert len(ends) >= 3  # sequences really end at different steps
    assert torch.equal(lean.ids, library.ids)
    assert lean.logprob.tolist() == pytest.approx(library.logprob.tolist(), abs=1e-4)


def test_image_errors_are_one_line_starting_with_the_name():
    from pix2tex.inference import image_error
    from pix2tex.preprocess import BlankImageError, ImageLoadError

    assert image_error(ImageLoadError("a.png: empty file"), "a.png") == "a.png: empty file"
    assert image_error(BlankImageError("no ink found\nmore"), "a.png") == "a.png: no ink found"
    # A message that merely begins with the same letters as the name still gets the name.
    assert image_error(ValueError("bad size limits"), "bad") == "bad: bad size limits"
    assert image_error(ValueError(), "x\ny.png") == "x\\ny.png: ValueError"
