"""Model folders and resume states: round trips, interrupted writes, hostile files."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from pix2tex.checkpoint import (
    CheckpointError,
    glyph_estimator,
    load_model_folder,
    load_resume_state,
    main,
    save_model_folder,
    save_resume_state,
)
from pix2tex.config import ModelConfig
from pix2tex.models.model import get_model
from pix2tex.normalize import normalize
from pix2tex.tokenizer import LatexTokenizer
from tests.helpers import read_formulas

CFG = ModelConfig(backbone_layers=[1, 1], dim=32, encoder_depth=1, heads=2, num_layers=1, num_tokens=128,
                  max_height=64, max_width=128, max_seq_len=32)


@pytest.fixture(scope="module")
def tokenizer():
    return LatexTokenizer.train([normalize(f) for f in read_formulas("chem_units", 500)], 128)


def test_model_folder_round_trip(tmp_path, tokenizer):
    model = get_model(CFG).eval()
    save_model_folder(tmp_path / "best", model, CFG, tokenizer, {"step": 7})
    loaded, cfg, tok, meta = load_model_folder(tmp_path / "best")
    assert cfg == CFG and meta == {"step": 7} and tok.to_str() == tokenizer.to_str()
    x = torch.randn(2, 1, 32, 64)
    assert torch.equal(loaded.generate(x, max_new_tokens=5).ids, model.generate(x, max_new_tokens=5).ids)


def test_half_precision_weights_load_as_float32(tmp_path, tokenizer):
    model = get_model(CFG)
    save_model_folder(tmp_path / "small", model, CFG, tokenizer, dtype=torch.float16)
    full = tmp_path / "full"
    save_model_folder(full, model, CFG, tokenizer)
    assert (tmp_path / "small" / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = load_model_folder(tmp_path / "small")[0]
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_replacing_a_folder_survives_a_crash_between_renames(tmp_path, tokenizer):
    model = get_model(CFG)
    folder = tmp_path / "last"
    save_model_folder(folder, model, CFG, tokenizer, {"step": 1})
    # A crash after "rename old away" and before "rename new in" leaves only last.old behind.
    os.replace(folder, tmp_path / "last.old")
    assert load_model_folder(folder)[3] == {"step": 1}
    save_model_folder(folder, model, CFG, tokenizer, {"step": 2})
    assert load_model_folder(folder)[3] == {"step": 2} and not (tmp_path / "last.old").exists()


def test_broken_model_folders(tmp_path, tokenizer):
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_model_folder(tmp_path)
    save_model_folder(tmp_path / "m", get_model(CFG), CFG, tokenizer)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable weights"):
        load_model_folder(tmp_path / "m")
    save_model_folder(tmp_path / "n", get_model(CFG), CFG, tokenizer)
    (tmp_path / "n" / "config.yaml").write_text("dim: 48\nheads: 2\n")
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        load_model_folder(tmp_path / "n")
    shutil.rmtree(tmp_path / "n")
    save_model_folder(tmp_path / "n", get_model(CFG), CFG, tokenizer)
    (tmp_path / "n" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete model folder"):
        load_model_folder(tmp_path / "n")


def test_glyph_scale_is_set_on_copy_and_checked_on_load(tmp_path, tokenizer, capsys):
    save_model_folder(tmp_path / "src", get_model(CFG), CFG, tokenizer, {"step": 7})
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--fp16", "--glyph-scale", "1.2"]) == 0
    *_, meta = load_model_folder(tmp_path / "dst")
    assert meta == {"step": 7, "glyph_scale": 1.2}
    assert main([str(tmp_path / "src"), str(tmp_path / "bad"), "--glyph-scale", "9"]) == 2
    assert "--glyph-scale: glyph_scale must be a number from 0.5 to 2.0, got 9.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    for value in ("1.2", True, 0.1, None):
        (tmp_path / "dst" / "meta.json").write_text(json.dumps({"glyph_scale": value}))
        with pytest.raises(CheckpointError, match=r"meta\.json: glyph_scale must be a number"):
            load_model_folder(tmp_path / "dst")


def test_glyph_estimator_is_set_on_copy_and_checked_on_load(tmp_path, tokenizer, capsys):
    save_model_folder(tmp_path / "src", get_model(CFG), CFG, tokenizer, {"step": 7})
    *_, meta = load_model_folder(tmp_path / "src")
    assert glyph_estimator(meta) == "soft"  # folders from before the choice existed
    assert main([str(tmp_path / "src"), str(tmp_path / "dst"), "--glyph-estimator", "stroke"]) == 0
    *_, meta = load_model_folder(tmp_path / "dst")
    assert meta == {"step": 7, "glyph_estimator": "stroke"} and glyph_estimator(meta) == "stroke"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "src"), str(tmp_path / "bad"), "--glyph-estimator", "sharp"])
    assert "invalid choice: 'sharp'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    for value in ("sharp", 1, None):
        (tmp_path / "dst" / "meta.json").write_text(json.dumps({"glyph_estimator": value}))
        with pytest.raises(CheckpointError,
                           match=r"meta\.json: glyph_estimator must be one of soft, stroke, stroke_capped, got "):
            load_model_folder(tmp_path / "dst")


def test_average_of_steps_is_the_mean_of_their_weights(tmp_path, tokenizer, capsys):
    torch.manual_seed(0)
    steps = {step: get_model(CFG) for step in (100, 200, 300)}
    for step, model in steps.items():
        save_model_folder(tmp_path / str(step), model, CFG, tokenizer, {"step": step, "val": {"bleu": 0.5}})
    assert main([str(tmp_path / "300"), str(tmp_path / "avg"), "--average", str(tmp_path / "100"),
                 "--average", str(tmp_path / "200")]) == 0
    averaged, config, tok, meta = load_model_folder(tmp_path / "avg")
    assert config == CFG and tok.to_str() == tokenizer.to_str()
    assert meta == {"step": 300, "averaged_steps": [100, 200, 300]}  # one step's scores would mislead
    states = [m.state_dict() for m in steps.values()]
    for key, value in averaged.state_dict().items():
        expected = (states[0][key] + states[1][key] + states[2][key]) / 3
        assert torch.allclose(value, expected, atol=1e-6), key
    assert any(not torch.allclose(value, states[2][key]) for key, value in averaged.state_dict().items())
    # Another run's model (other settings) cannot be averaged in: one line, nothing written.
    wider = ModelConfig(**{**CFG.__dict__, "dim": 64})
    save_model_folder(tmp_path / "other", get_model(wider), wider, tokenizer, {"step": 1})
    assert main([str(tmp_path / "300"), str(tmp_path / "bad"), "--average", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model settings or tokenizer differ" in err
    assert not (tmp_path / "bad").exists()


def test_resume_state_round_trip_and_refuses_code(tmp_path):
    model = get_model(CFG)
    opt = torch.optim.AdamW(model.parameters())
    state = {"format": "pix2tex-resume", "model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3,
             "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]}}
    save_resume_state(tmp_path / "last.pt", state)
    again = load_resume_state(tmp_path / "last.pt")
    assert again["step"] == 3 and torch.equal(again["rng"]["torch"], state["rng"]["torch"])

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "pix2tex-resume", "x": Exploit()}))
    with pytest.raises(CheckpointError, match="not a loadable resume state"):
        load_resume_state(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no resume state"):
        load_resume_state(tmp_path / "absent.pt")


_LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] +
                    [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                     f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
                     for i in range(9)] + ["dim: *j"])


@pytest.mark.parametrize("config_text,message", [
    (_LAUGHS, "anchors and aliases are not allowed"),
    ("num_layers: 100000000\n", "num_layers must be at most 64"),
    ("dim: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply|not valid YAML"),
    ("backbone_layers: [1000, 2]\n", "backbone_layers must list"),
])
def test_hostile_model_folder_configs_fail_fast(tmp_path, tokenizer, config_text, message):
    import time

    save_model_folder(tmp_path / "m", get_model(CFG), CFG, tokenizer)
    (tmp_path / "m" / "config.yaml").write_text(config_text)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        load_model_folder(tmp_path / "m")
    assert time.perf_counter() - start < 10 and "\n" not in str(info.value) and len(str(info.value)) < 600


def test_deeply_nested_meta_json_is_refused(tmp_path, tokenizer):
    save_model_folder(tmp_path / "m", get_model(CFG), CFG, tokenizer)
    (tmp_path / "m" / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="nested too deeply|must hold a JSON object"):
        load_model_folder(tmp_path / "m")


def test_inflating_resume_state_is_refused_before_reading(tmp_path):
    import zipfile

    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 * 2**20))  # 64 MiB of zeros: about 64 KB on disk
    assert path.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="refusing a compressed resume state"):
        load_resume_state(path)
    # A real resume state (torch writes stored members) still loads.
    save_resume_state(tmp_path / "ok.pt", {"format": "pix2tex-resume", "step": 3, "w": torch.ones(4)})
    assert load_resume_state(tmp_path / "ok.pt")["step"] == 3


_BOUNDED_LOAD = """
import resource, sys
from pix2tex.checkpoint import CheckpointError, load_model_folder, load_resume_state
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
try:
    (load_resume_state if sys.argv[1] == "state" else load_model_folder)(sys.argv[2])
except CheckpointError as exc:
    print("CheckpointError:", exc)
    sys.exit(0)
print("loaded")
"""


@pytest.mark.parametrize("kind", ["laughs", "huge_model", "nested_meta", "inflating_state"])
@pytest.mark.slow
def test_hostile_model_files_stay_bounded_in_a_child_with_1_gib(tmp_path, tokenizer, kind):
    """The same hostile files as above, each loaded in a child process with 1 GiB of address space
    and a time limit: a one-line CheckpointError, not a crash, a hang or an exhausted machine."""
    import subprocess
    import sys
    import time
    import zipfile
    from pathlib import Path

    folder = tmp_path / "m"
    save_model_folder(folder, get_model(CFG), CFG, tokenizer)
    target, mode = str(folder), "folder"
    if kind == "laughs":
        (folder / "config.yaml").write_text(_LAUGHS)
    elif kind == "huge_model":
        (folder / "config.yaml").write_text("num_layers: 100000000\ndim: 4096\n")
    elif kind == "nested_meta":
        (folder / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    else:
        target, mode = str(tmp_path / "last.pt"), "state"
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("archive/data.pkl", b"\0" * (2 * 2**30 // 2))  # 1 GiB of zeros, about 1 MB
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _BOUNDED_LOAD, mode, target], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert time.perf_counter() - start < 60
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 1 and lines[0].startswith("CheckpointError:"), \
        (result.stdout[-500:], result.stderr[-1500:])
