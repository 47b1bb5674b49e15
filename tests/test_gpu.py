"""The GPU stage's CPU path: prepare a tiny pack, train for a few seconds, fetch the weights back."""

from __future__ import annotations

import pytest
import torch

from pix2tex.checkpoint import load_model_folder, save_model_folder
from pix2tex.config import ModelConfig
from pix2tex.dataset.dataset import Im2LatexDataset
from pix2tex.gpu import device_command, fetch, prepare, train
from pix2tex.models import get_model
from pix2tex.tokenizer import LatexTokenizer
from tests.helpers import SAMPLE


@pytest.mark.slow
def test_prepare_train_fetch_on_the_cpu(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    full = Im2LatexDataset(SAMPLE / "labels.tsv", SAMPLE)
    full.save(data / "train.pkl")
    tokenizer = LatexTokenizer.train(full.labels, 300, kind="tokens")
    cfg = ModelConfig(backbone_layers=[1, 1], backbone_channels=[32, 64], stem_channels=16, backbone_norm="batch",
                      mask_padding=True, dim=32, encoder_depth=1, heads=2, num_layers=1, num_tokens=300,
                      max_height=128, max_width=640, max_seq_len=160)
    torch.manual_seed(0)
    start = tmp_path / "start"
    save_model_folder(start, get_model(cfg), cfg, tokenizer, {"step": 0})

    gpu = tmp_path / ".gpu"
    info = prepare(start, data, gpu, max_mb=0.3, wheels=False)
    assert info["train"] > 30 and info["folder_bytes"] < 2 * 2**20
    fp16, fp32 = (gpu / "start" / "model.safetensors").stat().st_size, (start / "model.safetensors").stat().st_size
    assert fp16 < 0.6 * fp32  # the start weights travel as fp16

    out = tmp_path / "out"
    out.mkdir()
    weights = train(gpu, out, minutes=0.25, work=tmp_path / "work",
                    overrides={"batchsize": 8, "num_workers": 0, "warmup_steps": 2, "sample_freq": 10**6})
    assert all(f.stat().st_size < 16 * 2**20 for f in weights.iterdir())
    # It trained (how many steps fit in 15 s depends on what else the machine runs: not asserted).
    assert '"step": 1,' in (out / "metrics.jsonl").read_text()

    back = fetch(out, tmp_path / "back")
    before = load_model_folder(start)[0].state_dict()
    after = load_model_folder(back)[0].state_dict()
    assert any(not torch.allclose(before[k].float(), after[k].float(), atol=1e-3) for k in before)
    assert (back / "gpu_metrics.jsonl").exists()
    assert "pix2tex.gpu train" in device_command() and len(device_command()) < 2000
