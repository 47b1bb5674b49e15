from __future__ import annotations

import os
from pathlib import Path

import pytest

from pix2tex.config import ConfigError, config_from_dict, load_config, save_config

SETTINGS = Path(__file__).resolve().parents[1] / "pix2tex" / "model" / "settings"


@pytest.mark.parametrize("name", ["config-hybrid.yaml", "config-vit.yaml", "debug.yaml", "default.yaml",
                                  "recipe.yaml", "continue.yaml"])
def test_bundled_settings_validate(name):
    config = load_config(SETTINGS / name, check_files=False)
    assert config.model.dim % config.model.heads == 0
    assert config.model.encoder_structure in ("hybrid", "vit")


def test_values_are_typed():
    config = config_from_dict({"lr": "5e-4", "dim": 128, "betas": [0.9, 0.98], "wandb": False}, check_files=False)
    assert config.train.lr == pytest.approx(5e-4)
    assert config.model.dim == 128
    assert config.train.betas == [0.9, 0.98]


@pytest.mark.parametrize("raw, message", [
    ({"batchsise": 4}, "unknown key 'batchsise' (did you mean 'batchsize'?)"),
    ({"dim": "wide"}, "'dim' must be an integer, got 'wide'"),
    ({"wandb": "yes"}, "'wandb' must be true or false"),
    ({"backbone_layers": 3}, "'backbone_layers' must be a list"),
    ({"dim": 100, "heads": 8}, "dim (100) must be divisible by heads (8)"),
    ({"encoder_structure": "cnn"}, "encoder_structure must be 'hybrid' or 'vit'"),
    ({"optimizer": "SGD"}, "optimizer must be 'Adam' or 'AdamW'"),
    ({"eos_token": 7}, "'eos_token' is fixed to 2 by the tokenizer"),
    ({"max_width": 650}, "must be multiples of patch_size"),
    ({"corpus_weights": [1, 2]}, "'corpus_weights' must be a mapping"),
    ({"corpus_weights": {"im2latex_val": -1}}, "corpus_weights: weight of 'im2latex_val' must be a number >= 0"),
    ({"corpus_weights": {"k12": "many"}}, "corpus_weights: weight of 'k12' must be a number >= 0"),
    ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
    ({"lr": "nan"}, "lr must be a positive finite number, got nan"),  # as --set lr=nan gives it
    ({"max_lr": float("inf")}, "max_lr must be a positive finite number, got inf"),
    ({"max_lr": 0}, "max_lr must be a positive finite number, got 0"),
    ({"lr": -1e-4}, "lr must be a positive finite number, got -0.0001"),
    ({"min_lr": -1e-5}, "min_lr must be a finite number >= 0, got -1e-05"),
    ({"min_lr": float("inf")}, "min_lr must be a finite number >= 0, got inf"),
    ({"pct_start": 0}, "pct_start must be a positive finite number, got 0"),
    ({"pct_start": 1.5}, "pct_start must be below 1"),
    ({"gamma": 0}, "gamma must be a positive finite number, got 0"),
    ({"gamma": 1.2}, "gamma must be at most 1"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0, got nan"),
    ({"clip_grad": -1}, "clip_grad must be a finite number >= 0, got -1"),
    ({"warmup_steps": -5}, "warmup_steps, max_label_tokens and length_pool must be >= 0"),
    ({"betas": [0.9, 1.5]}, "betas must be two numbers in [0, 1), got [0.9, 1.5]"),
    ({"scheduler": "WarmupCosine", "max_steps": 10, "max_lr": 1e-4, "min_lr": 1e-3},
     "min_lr (0.001) must be below max_lr (0.0001)"),
])
def test_bad_values_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="run.yaml", check_files=False)
    text = str(info.value)
    assert message in text and text.startswith("run.yaml: ") and "\n" not in text


def test_missing_input_file_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: nowhere/train.pkl\n")
    with pytest.raises(ConfigError, match="'data' names a missing file: nowhere/train.pkl"):
        load_config(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_seed_aliases_and_round_trip(tmp_path):
    config = config_from_dict({"test_data": None, "load_ckpt": None, "bos_token": 1, "dim": 64, "heads": 4},
                              check_files=False)
    path = tmp_path / "resolved.yaml"
    save_config(config, path)
    assert load_config(path, check_files=False) == config


def test_settings_files_refuse_aliases_and_special_files(tmp_path):
    from pix2tex.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("base: &b 16\nbatchsize: *b\n")
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed"):
        load_config(path, check_files=False)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo, check_files=False)


def test_unused_seed_keys_warn_only_when_given_a_value():
    import warnings

    from pix2tex.config import SeedKeyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_from_dict({"temperature": 0.2, "debug": False})  # the defaults: silent
        for name in ("default.yaml", "config-hybrid.yaml", "config-vit.yaml"):
            load_config(SETTINGS / name, check_files=False)
    with pytest.warns(SeedKeyWarning) as caught:
        config_from_dict({"debug": True, "max_dimensions_filter": False, "testdata": "t.pkl"}, check_files=False)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert messages[0].startswith("<dict>: 'debug' is a seed setting that nothing here reads")
    assert "always leaves out images" in messages[1] and "--data" in messages[2]
