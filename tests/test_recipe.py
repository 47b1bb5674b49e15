"""The training recipe's parts: warm-up + cosine schedule, CPU budget, curriculum filter, light augmentation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pix2tex.config import ConfigError, config_from_dict
from pix2tex.dataset.transforms import train_transform
from pix2tex.train import build_scheduler, warmup_cosine

BASE = {"scheduler": "WarmupCosine", "max_lr": 2e-3, "min_lr": 2e-5, "warmup_steps": 10, "max_steps": 100}


def test_warmup_cosine_shape():
    rates = [warmup_cosine(s, 10, 100, 2e-3, 2e-5) for s in range(120)]
    assert rates[0] == pytest.approx(2e-4) and rates[9] == pytest.approx(2e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))  # never rises after the warm-up
    assert rates[100] == pytest.approx(2e-5) and rates[119] == pytest.approx(2e-5)  # stays at min_lr after the end
    assert rates[55] == pytest.approx((2e-3 + 2e-5) / 2)  # halfway down the cosine


def test_scheduler_follows_the_schedule_and_survives_a_state_round_trip():
    config = config_from_dict(BASE, check_files=False)
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([param], lr=config.train.lr)
    sched = build_scheduler(opt, config, config.train.max_steps)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([warmup_cosine(s, 10, 100, 2e-3, 2e-5) for s in range(30)], rel=1e-9)
    # A resumed run rebuilds the scheduler and loads its state: it continues at the same rate.
    opt2 = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=config.train.lr)
    sched2 = build_scheduler(opt2, config, config.train.max_steps)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(warmup_cosine(30, 10, 100, 2e-3, 2e-5), rel=1e-9)


@pytest.mark.parametrize("changes,message", [
    ({"max_steps": None}, "WarmupCosine needs max_steps"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"max_cpu_minutes": 0}, "max_cpu_minutes"),
    ({"augment_level": "heavy"}, "augment_level"),
    ({"max_label_tokens": -1}, "max_label_tokens"),
    ({"backbone_layers": [2, 2], "backbone_channels": [64, 128, 256]}, "one width per stage"),
    ({"backbone_norm": "layer"}, "backbone_norm"),
])
def test_bad_recipe_settings_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict({**BASE, **changes}, check_files=False)
    assert "\n" not in str(info.value)


def test_light_augmentation_is_milder_than_full():
    rng = np.random.default_rng(0)
    image = np.full((48, 200), 255, np.uint8)
    image[10:38, 20:180:6] = 0  # vertical strokes
    diffs = {}
    for level in ("light", "full"):
        total = 0.0
        for _ in range(40):
            transform = train_transform(level)
            transform.set_random_seed(int(rng.integers(1 << 30)))
            out = transform(image=image)["image"]
            if out.shape == image.shape:
                total += float(np.abs(out.astype(float) - image).mean())
            else:
                total += 255.0 / 4  # geometric change of size: counts as a large change
        diffs[level] = total / 40
    assert 0 < diffs["light"] < diffs["full"]
    with pytest.raises(ValueError, match="light"):
        train_transform("heavy")


def _point(name, minutes, bleu, bpc):
    return {"candidate": name, "budget": minutes, "cpu_min": minutes, "step": 10, "val_bleu": bleu,
            "real_bleu": bleu, "val_edit": 0.9, "real_edit": 0.9, "bpc": bpc, "bpc_shuffled": bpc + 0.01,
            "image_gain_bpc": 0.01}


def test_race_ranks_by_loss_until_someone_reads_then_by_bleu():
    from benchmarks.race import rank_key

    early = [_point("a", 8, 0.004, 2.5), _point("b", 8, 0.0, 2.4)]
    assert sorted(early, key=lambda p: rank_key(p, early))[0]["candidate"] == "b"  # BLEU 0.004 is noise
    later = [_point("a", 32, 0.20, 1.5), _point("b", 32, 0.10, 1.4)]
    assert sorted(later, key=lambda p: rank_key(p, later))[0]["candidate"] == "a"


def test_race_plot_writes_a_png(tmp_path):
    import json

    from benchmarks.race import plot

    points = [_point("a", 8, 0.0, 2.5), _point("a", 16, 0.01, 2.2), _point("b", 8, 0.0, 2.6)]
    (tmp_path / "race.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    plot(tmp_path, tmp_path / "race.png")
    assert (tmp_path / "race.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_override_args_are_read_back_as_the_same_settings():
    from pix2tex.train import _parse_overrides, override_args

    settings = {"valdata": None, "name": "run", "max_steps": 12, "max_lr": 2e-3, "cpu_bf16": True,
                "backbone_channels": [64, 128], "corpus_weights": {"im2latex_val": 4}, "data": "/x/train.pkl"}
    args = override_args(settings)
    assert args[::2] == ["--set"] * len(settings)
    assert _parse_overrides(args[1::2]) == settings


def test_weight_decay_spares_biases_norms_and_embeddings():
    from pix2tex.train import decay_groups
    from tests.helpers import tiny_model

    model = tiny_model("hybrid", backbone_norm="batch")
    decay, keep = decay_groups(model, 0.01)
    assert (decay["weight_decay"], keep["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert kept | decayed == set(names.values()) and not kept & decayed
    assert {"encoder.vit.cls_token", "encoder.vit.patch_embed.pos_embed", "decoder.net.token_emb.emb.weight",
            "decoder.net.pos_emb.emb.weight"} <= kept
    assert all(n.endswith(("bias", "weight", "gamma")) for n in kept if "emb" not in n and "cls" not in n)
    assert any("norm" in n for n in kept) and not any("norm" in n for n in decayed)
    assert all(dict(model.named_parameters())[n].dim() >= 2 for n in decayed)
    assert "decoder.net.to_logits.weight" in decayed


def test_a_resume_state_with_one_parameter_group_resumes_with_one():
    from pix2tex.config import Config
    from pix2tex.train import build_optimizer
    from tests.helpers import tiny_model

    model = tiny_model("vit")
    config = config_from_dict({"optimizer": "AdamW", "weight_decay": 0.01}, check_files=False)
    assert isinstance(config, Config)
    legacy = build_optimizer(model, config, one_group=True)  # how runs before the groups were built
    model(torch.randn(2, 1, 32, 64), torch.randint(4, 20, (2, 6))).loss.backward()
    legacy.step()
    saved = legacy.state_dict()
    assert len(saved["param_groups"]) == 1
    with pytest.raises(ValueError, match="parameter group"):
        build_optimizer(model, config).load_state_dict(saved)  # today's two groups cannot take it
    again = build_optimizer(model, config, one_group=len(saved["param_groups"]) == 1)
    again.load_state_dict(saved)
    assert again.state_dict()["state"].keys() == saved["state"].keys()
