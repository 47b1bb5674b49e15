"""The light install: `pip install pix2tex` reads with onnxruntime, and has no torch at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pix2tex.inference import LatexOCR, choose_engine
from pix2tex.model_folder import CheckpointError
from tests.helpers import REPO, SAMPLE

IMAGES = sorted((SAMPLE / "images").glob("*.png"))


def test_auto_engine_reads_the_bundled_graphs_and_a_training_folder_with_torch(tmp_path):
    assert choose_engine("auto", None) == "onnx"  # the bundled folder carries its ONNX graphs
    bundled = REPO / "pix2tex" / "model" / "checkpoints" / "default"
    weights_only = tmp_path / "m"
    weights_only.mkdir()
    for name in ("model.safetensors", "config.yaml", "tokenizer.json", "meta.json"):
        shutil.copyfile(bundled / name, weights_only / name)
    assert choose_engine("auto", weights_only) == "torch"
    assert LatexOCR(weights_only).engine == "torch"
    with pytest.raises(CheckpointError, match="not an ONNX model folder"):
        LatexOCR(weights_only, engine="onnx")
    with pytest.raises(ValueError, match="engine must be one of auto, onnx, torch"):
        choose_engine("tensorflow", None)


def test_bundled_graphs_read_as_the_bundled_weights():
    """The two forms of the bundled model give the same LaTeX (docs/RESULTS.md counts all 986)."""
    paths = IMAGES[:12]
    onnx = LatexOCR().predict(paths)
    torch_readings = LatexOCR(engine="torch").predict(paths)
    assert [r.latex for r in onnx] == [r.latex for r in torch_readings]
    assert [r.confidence for r in onnx] == pytest.approx([r.confidence for r in torch_readings], abs=1e-4)


def _copy_sources(dst: Path) -> Path:
    """What a source distribution holds (pyproject, README, the package): pip builds it away from the
    checkout, which stays untouched."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, dst / name)
    shutil.copytree(REPO / "pix2tex", dst / "pix2tex", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.slow
def test_light_install_reads_a_real_image_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(_copy_sources(tmp_path / "src"))], check=True, env=env, timeout=1200)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    found = run(str(venv / "bin" / "python"), "-c",
                "import importlib.util as u; print([m for m in ('torch', 'timm', 'x_transformers', 'sacrebleu') "
                "if u.find_spec(m)])")
    assert found.stdout.strip() == "[]", found.stderr
    image = str(IMAGES[3])
    read = run(str(venv / "bin" / "pix2tex"), "predict", image)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == LatexOCR(engine="torch")(image)  # the full install's PyTorch reading
    api = run(str(venv / "bin" / "python"), "-c",
              f"from pix2tex import LatexOCR; o = LatexOCR(); print(o.engine); print(o({image!r}))")
    assert api.stdout.splitlines() == ["onnx", read.stdout.strip()], api.stderr
    for verb in ("train", "eval", "export"):
        refused = run(str(venv / "bin" / "pix2tex"), verb)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"error: pix2tex {verb} needs torch, which the light install leaves out: pip install 'pix2tex[train]'"]
