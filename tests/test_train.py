"""The training loop's pieces on their own: one step, the checkpoint writer, resume refusal, --set.

test_e2e.py trains and resumes whole runs; these tests pin each piece down in seconds.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pix2tex.checkpoint import load_model_folder, load_resume_state
from pix2tex.config import ConfigError, config_from_dict
from pix2tex.dataset.dataset import Im2LatexDataset
from pix2tex.distributed import Dist
from pix2tex.models import get_model
from pix2tex.tokenizer import LatexTokenizer
from pix2tex.train import CheckpointWriter, build_optimizer, build_scheduler, check_resumable, main, train_step
from tests.helpers import SAMPLE, TINY, tiny_model

SETTINGS = {"optimizer": "AdamW", "scheduler": "WarmupCosine", "max_lr": 1e-3, "min_lr": 1e-5, "warmup_steps": 2,
            "max_steps": 10, "batchsize": 6}


@pytest.fixture(scope="module")
def real_batch():
    """Six real im2latex_sample images with their labels, tokenized with a vocabulary of their own."""
    ds = Im2LatexDataset(SAMPLE / "labels.tsv", SAMPLE, batchsize=6, test=True, max_dimensions=(640, 128),
                         max_seq_len=256)
    ds.set_tokenizer(LatexTokenizer.train(list(ds.labels), 300, kind="tokens"))
    return ds.prepare_data(ds.batches(0)[0]), ds.tokenizer.vocab_size


def _setup(vocab: int, **changes):
    shape = {**TINY, "backbone_layers": [1, 1], "mask_padding": True, "num_tokens": vocab, "max_height": 128,
             "max_width": 640, "max_seq_len": 256}
    config = config_from_dict({**SETTINGS, **shape, **changes}, check_files=False)
    torch.manual_seed(0)
    model = get_model(config.model)
    model.train()
    optimizer = build_optimizer(model, config)
    return config, model, optimizer, build_scheduler(optimizer, config, 10)


def test_micro_batches_give_the_same_step_as_the_whole_batch(real_batch):
    batch, vocab = real_batch
    results = []
    for micro in (-1, 4):  # 4 splits the 6 rows unevenly: 4 + 2
        config, model, optimizer, scheduler = _setup(vocab, micro_batchsize=micro)
        before = copy.deepcopy(model.state_dict())
        for module in model.modules():  # batch statistics would differ between micro-batches
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        loss, lr = train_step(model, model, batch, optimizer, scheduler, t=config.train, ddp=Dist(),
                              device=torch.device("cpu"), use_bf16=False)
        results.append((loss, lr, copy.deepcopy(model.state_dict())))
    (whole, lr_whole, after_whole), (split, lr_split, after_split) = results
    assert isinstance(whole, torch.Tensor) and whole.dim() == 0  # kept as a tensor until logged
    assert torch.isfinite(whole) and float(whole) > 0
    assert float(whole) == pytest.approx(float(split), rel=1e-5)
    assert lr_whole == lr_split == pytest.approx(5e-4)  # warm-up: half the peak on the first of 2 steps
    assert any(not torch.equal(before[k], after_whole[k]) for k in before)  # the step moved weights
    # AdamW's first step divides each gradient by its own size, so float-summation differences in a
    # gradient near zero come out ~1e-6 (2e-6 in 1 of 65,536 weights); a lost or mis-weighted
    # micro-batch moves weights by up to the learning rate, 5e-4.
    for key in after_whole:
        assert torch.allclose(after_whole[key], after_split[key], atol=1e-5), key


@pytest.mark.slow
def test_steps_lower_the_loss_on_a_fixed_batch(real_batch):
    batch, vocab = real_batch
    config, model, optimizer, scheduler = _setup(vocab, max_lr=3e-3)
    losses = [float(train_step(model, model, batch, optimizer, scheduler, t=config.train, ddp=Dist(),
                               device=torch.device("cpu"), use_bf16=False)[0]) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]


def test_checkpoint_writer_writes_loadable_folders_and_states_on_rank_0_only(real_batch, tmp_path):
    batch, vocab = real_batch
    config, model, optimizer, scheduler = _setup(vocab)
    tokenizer = LatexTokenizer.train(batch.labels, 300, kind="tokens")
    writer = CheckpointWriter(tmp_path, model, config, tokenizer, optimizer, scheduler, is_main=True)
    writer.folder("last", {"step": 3})
    writer.state(step=3, epoch=1, batch=7, best_bleu=0.25, cpu_seconds=12.5)
    loaded, loaded_config, _, meta = load_model_folder(tmp_path / "last")
    assert meta["step"] == 3 and loaded_config == config.model
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    state = load_resume_state(tmp_path / "last.pt")
    kept = (state["step"], state["epoch"], state["batch"], state["best_bleu"], state["cpu_seconds"])
    assert kept == (3, 1, 7, 0.25, 12.5)
    assert state["config"] == config.to_dict()
    other = tmp_path / "rank1"
    quiet = CheckpointWriter(other, model, config, tokenizer, optimizer, scheduler, is_main=False)
    quiet.state(step=3, epoch=1, batch=7, best_bleu=0.25, cpu_seconds=1.0)
    quiet.folder("last", {"step": 3})
    assert not other.exists()


def test_resume_refuses_changed_model_settings_but_takes_new_training_settings():
    config = config_from_dict(SETTINGS, check_files=False)
    saved = config.to_dict()
    check_resumable(saved, config_from_dict({**SETTINGS, "max_lr": 5e-4, "max_steps": 99}, check_files=False))
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, dim=config.model.dim * 2))
    with pytest.raises(ConfigError, match="--resume: model settings differ from the saved run: dim$"):
        check_resumable(saved, wider)


def test_set_overrides_reach_the_config_and_bad_ones_are_one_line_errors(tmp_path, capsys):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("batchsize: 4\n")
    assert main(["--config", str(config_file), "--set", "batchsize"]) == 2
    assert capsys.readouterr().err.strip() == "error: --set 'batchsize': expected KEY=VALUE"
    assert main(["--config", str(config_file), "--set", "max_lr=fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_lr" in err[0]
    # A well-formed override gets as far as the data: the config needs a training set.
    assert main(["--config", str(config_file), "--set", "max_lr=0.01", "--set", "batchsize=8"]) == 2
    assert "needs 'data'" in capsys.readouterr().err


def _eight_sample_run(tmp_path) -> tuple[Im2LatexDataset, dict]:
    """train.pkl of 8 real images (glyphs measured "soft"), a tokenizer for them, and the settings
    of a tiny model trained on it (without valdata)."""
    from pix2tex.dataset.dataset import read_labels

    rows = read_labels(SAMPLE / "labels.tsv")[:8]
    (tmp_path / "labels.tsv").write_text("".join(f"{SAMPLE / rel}\t{latex}\n" for rel, latex in rows))
    ds = Im2LatexDataset(tmp_path / "labels.tsv", "/")
    ds.save(tmp_path / "train.pkl")
    LatexTokenizer.train(list(ds.labels), 200, kind="tokens").save(tmp_path / "tok.json")
    shape = {**TINY, "num_tokens": 200, "max_height": 128, "max_width": 640, "max_seq_len": 256}
    files = {"data": str(tmp_path / "train.pkl"), "tokenizer": str(tmp_path / "tok.json"), "batchsize": 4}
    return ds, {**SETTINGS, **shape, **files}


def test_validation_data_must_measure_glyphs_as_the_training_data_does(tmp_path):
    """A validation set sized by another glyph estimator would be read at other sizes than training."""
    from pix2tex.train import load_datasets

    ds, settings = _eight_sample_run(tmp_path)
    ds.remeasure_glyphs("stroke")
    ds.save(tmp_path / "val_stroke.pkl")
    config = config_from_dict({**settings, "valdata": str(tmp_path / "train.pkl")})
    train_set, val_set, _ = load_datasets(config)
    assert train_set.glyph_estimator == val_set.glyph_estimator == "soft"
    config = config_from_dict({**settings, "valdata": str(tmp_path / "val_stroke.pkl")})
    with pytest.raises(ConfigError, match=r"val_stroke\.pkl measures glyphs with 'stroke', .*train\.pkl with 'soft'"):
        load_datasets(config)


def test_glyph_scale_reaches_both_datasets_and_is_checked(tmp_path):
    """The config's glyph_scale sizes training and validation images alike; out of range it is refused."""
    from pix2tex.train import load_datasets

    _, settings = _eight_sample_run(tmp_path)
    settings["valdata"] = str(tmp_path / "train.pkl")
    train_set, val_set, _ = load_datasets(config_from_dict({**settings, "glyph_scale": 1.2}))
    assert train_set.glyph_scale == val_set.glyph_scale == 1.2
    assert load_datasets(config_from_dict(settings))[0].glyph_scale == 1.0
    with pytest.raises(ConfigError, match="^<dict>: glyph_scale must be a number from 0.5 to 2.0, got 2.5$"):
        config_from_dict({**settings, "glyph_scale": 2.5})


def test_ema_folders_hold_the_average_of_the_steps_weights_and_resume_continues_it(tmp_path):
    """With ema_decay the model folders hold the running average of the weights after each step (a
    plain mean until 1/(1 - decay) steps); last.pt keeps it, so resumed runs continue the same mean."""
    from safetensors.torch import load_file

    from pix2tex.train import train

    _, settings = _eight_sample_run(tmp_path)
    settings = {**settings, "model_path": str(tmp_path / "runs"), "name": "ema", "ema_decay": 0.9,
                "sample_freq": 1, "augment": False, "max_steps": 4}
    run = tmp_path / "runs" / "ema"
    raw = []
    for step in range(1, 5):  # one step per process: each resumes the last one's state
        train(config_from_dict({**settings, "max_steps": step}), resume=step > 1, device=torch.device("cpu"),
              progress=False)
        state = load_resume_state(run / "last.pt")
        assert state["step"] == step and state["ema_updates"] == step
        raw.append(state["model"])
    mean = {k: sum(r[k].float() for r in raw) / 4 for k in raw[0] if raw[0][k].is_floating_point()}
    assert all(torch.allclose(state["ema"][k], mean[k], atol=1e-6) for k in mean)
    assert any(not torch.allclose(state["ema"][k], raw[-1][k]) for k in mean)  # not the last step's weights
    folder = load_file(run / "last" / "model.safetensors")
    assert all(torch.equal(folder[k], state["ema"][k]) for k in folder)

    # A state written without an average (ema_decay was 0) resumes into a new one from its weights.
    del state["ema"], state["ema_updates"]
    torch.save(state, run / "last.pt")
    train(config_from_dict({**settings, "max_steps": 5}), resume=True, device=torch.device("cpu"), progress=False)
    state = load_resume_state(run / "last.pt")
    assert state["ema_updates"] == 1
    assert all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        config_from_dict({**settings, "ema_decay": 1.0})


def test_load_chkpt_into_a_larger_canvas_reads_what_fitted_before_exactly(tmp_path, capsys):
    """A model with a wider canvas and longer sequences, started from a smaller one's weights,
    reads an image that fitted the small one exactly as it did; its new positions are still fresh."""
    from pix2tex.checkpoint import save_model_folder
    from pix2tex.train import POSITION_TABLES, fit_position_tables, train

    small = tiny_model("hybrid")  # canvas 64x128, max_seq_len 24
    large = tiny_model("hybrid", seed=1, max_width=192, max_seq_len=40)
    fresh = copy.deepcopy(large.state_dict())
    weights, fitted = fit_position_tables(small.state_dict(), large)
    assert len(fitted) == 2 and all(any(f.startswith(key) for f in fitted) for key in POSITION_TABLES)
    large.load_state_dict(weights)
    images = torch.rand(3, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(large.encoder(images), small.encoder(images))
    assert torch.equal(large.generate(images, max_new_tokens=23).ids, small.generate(images, max_new_tokens=23).ids)
    table = large.state_dict()[POSITION_TABLES[0]]
    assert torch.equal(table[:, :, 128 // 16:], fresh[POSITION_TABLES[0]][:, :, 128 // 16:])  # the new columns
    # The other way round (a smaller model from a larger one) is not fitted: loading refuses it.
    weights, fitted = fit_position_tables(large.state_dict(), small)
    assert fitted == []
    with pytest.raises(RuntimeError, match="size mismatch"):
        small.load_state_dict(weights)

    # Training does so for load_chkpt: a 640-pixel-wide run starts from a 320-pixel-wide model folder.
    _, settings = _eight_sample_run(tmp_path)
    narrow = config_from_dict({**settings, "max_width": 320}).model
    save_model_folder(tmp_path / "narrow", get_model(narrow), narrow, LatexTokenizer.load(tmp_path / "tok.json"))
    train(config_from_dict({**settings, "load_chkpt": str(tmp_path / "narrow"), "max_steps": 1,
                            "model_path": str(tmp_path / "runs")}), device=torch.device("cpu"), progress=False)
    assert f"position table widened: {POSITION_TABLES[0]} (1, 8, 20, 32) -> (1, 8, 40, 32)" in capsys.readouterr().err


def test_load_chkpt_into_a_deeper_decoder_reads_exactly_as_before_and_the_new_blocks_learn(tmp_path, capsys):
    """Decoder blocks stacked on a checkpoint's start with their output projections at zero: the
    grown model writes exactly the checkpoint's logits, and one training step moves the new blocks."""
    from pix2tex.checkpoint import save_model_folder
    from pix2tex.train import DECODER_LAYERS, grow_decoder, train

    shallow = tiny_model("hybrid")  # 2 decoder layers: 6 blocks (self-attention, cross-attention, feed-forward)
    deep = tiny_model("hybrid", seed=1, num_layers=4)
    weights, added = grow_decoder(shallow.state_dict(), deep)
    assert added == 6
    deep.load_state_dict(weights)
    images = torch.rand(3, 1, 64, 128, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        memory = shallow.encoder(images)
        assert torch.equal(deep.decoder(ids, memory), shallow.decoder(ids, memory))
    assert torch.equal(deep.generate(images, max_new_tokens=23).ids, shallow.generate(images, max_new_tokens=23).ids)
    assert grow_decoder(deep.state_dict(), shallow)[1] == 0  # a deeper checkpoint is never cut down

    # Through training: a 4-layer run from a 2-layer model folder says so, and its new blocks move.
    _, settings = _eight_sample_run(tmp_path)
    small = config_from_dict(settings).model
    save_model_folder(tmp_path / "shallow", get_model(small), small, LatexTokenizer.load(tmp_path / "tok.json"))
    result = train(config_from_dict({**settings, "num_layers": 4, "load_chkpt": str(tmp_path / "shallow"),
                                     "max_steps": 1, "model_path": str(tmp_path / "runs")}),
                   device=torch.device("cpu"), progress=False)
    assert "decoder grown by 6 blocks (output projections at zero)" in capsys.readouterr().err
    trained = load_model_folder(result.run_dir / "last")[0].state_dict()
    new_out = [k for k in trained if k.startswith(f"{DECODER_LAYERS}6.") and "to_out" in k]
    assert new_out and all(trained[k].abs().sum() > 0 for k in new_out)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_during_an_optimizer_step_stops_after_it_with_a_clean_state(tmp_path, signum):
    """SIGTERM or Ctrl+C that arrives inside optimizer.step() lets the step finish, then saves: the
    resume state equals that of a run that stopped cleanly after the same step (weights, optimizer,
    weight average, position)."""
    import os
    import signal
    import time

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from pix2tex.train import train

    _, settings = _eight_sample_run(tmp_path)
    settings = {**settings, "scheduler": "StepLR", "ema_decay": 0.9, "augment": False, "sample_freq": 100,
                "model_path": str(tmp_path / "runs")}
    train(config_from_dict({**settings, "name": "clean", "max_steps": 3}), device=torch.device("cpu"), progress=False)
    clean = load_resume_state(tmp_path / "runs" / "clean" / "last.pt")

    steps = []

    def signal_inside_the_third_step(optimizer, args, kwargs):  # noqa: ARG001
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), getattr(signal, signum))
            time.sleep(0.2)  # the handler runs here, inside the step

    # What was installed before (a job started in the background without job control ignores SIGINT).
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    handle = register_optimizer_step_pre_hook(signal_inside_the_third_step)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config_from_dict({**settings, "name": "signalled", "max_steps": 10}), device=torch.device("cpu"),
                  progress=False)
    finally:
        handle.remove()
    state = load_resume_state(tmp_path / "runs" / "signalled" / "last.pt")
    assert (state["step"], state["epoch"], state["batch"], state["ema_updates"]) == \
        (clean["step"], clean["epoch"], clean["batch"], clean["ema_updates"]) == (3, 1, 1, 3)  # 2 batches an epoch
    for part in ("model", "ema"):
        assert all(torch.equal(state[part][k], clean[part][k]) for k in clean[part]), part
    for key, values in clean["optimizer"]["state"].items():
        assert all(torch.equal(state["optimizer"]["state"][key][name], v) for name, v in values.items())
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers put back
