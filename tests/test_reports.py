"""Reports on runs and models: benchmarks.compare (two models' predictions side by side),
benchmarks.errors (where a model's readings go wrong) and benchmarks.curve (a staged run's
learning curve)."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks import curve
from benchmarks.compare import main
from tests.helpers import read_formulas


def _write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["image", "prediction", "reference"])
        writer.writerows(rows)


def test_counts_wins_and_losses_and_bounds_the_gain(tmp_path, capsys):
    refs = read_formulas("im2latex_val", 40)
    old = [(f"{k}.png", " ".join(r.split()[: len(r.split()) // 2]), r) for k, r in enumerate(refs)]
    # The new model gets the first 30 right and repeats itself on the last 10.
    new = [(f"{k}.png", r if k < 30 else r + " x" * 210, r) for k, r in enumerate(refs)]
    _write(tmp_path / "old.tsv", old)
    _write(tmp_path / "new.tsv", new)
    assert main([str(tmp_path / "old.tsv"), str(tmp_path / "new.tsv"), "--resamples", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["new"]["exact_match"] == pytest.approx(0.75)
    assert out["edit_distance_lower"] == 30 and out["long_outputs_new"] == 10 and out["long_outputs_old"] == 0
    gain = out["new"]["bleu"] - out["old"]["bleu"]
    assert out["bleu_gain_p05"] <= gain <= out["bleu_gain_p95"]


def test_refuses_files_that_disagree_on_references(tmp_path, capsys):
    _write(tmp_path / "old.tsv", [("a.png", "x", "x ^ { 2 }")])
    _write(tmp_path / "new.tsv", [("a.png", "x", "y")])
    assert main([str(tmp_path / "old.tsv"), str(tmp_path / "new.tsv")]) == 2
    assert "1 images have different references" in capsys.readouterr().err


def test_error_table_counts_each_edit_once_and_groups_images_by_structure(tmp_path, capsys):
    from benchmarks import errors

    refs = [r"\frac { a } { b }", r"\sum _ { i = 1 } ^ { n } x _ { i } ^ { \prime }", r"\hat { x } = y",
            r"\left( x \right)"]
    preds = [r"\frac { a } { b }",                    # exact
             r"\sum _ { i = 1 } ^ { n } x _ { i }",  # misses "^ { \prime }": 4 deletions
             r"\bar { x } = y",                       # one substitution
             r"\left( x \right) ,"]                   # one insertion
    _write(tmp_path / "p.tsv", [(f"{k}.png", p, r) for k, (p, r) in enumerate(zip(preds, refs, strict=True))])
    assert errors.main([str(tmp_path / "p.tsv"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    edits = table["edits"]
    assert (edits["delete"]["total"], edits["insert"]["total"], edits["replace"]["total"]) == (4, 1, 1)
    assert dict(edits["replace"]["top"]) == {r"\hat → \bar": 1} and dict(edits["insert"]["top"]) == {",": 1}
    assert dict(edits["delete"]["top"])[r"\prime"] == 1
    rows = {r["group"]: r for r in table["by_structure"]}
    assert rows["fraction"]["images"] == 1 and rows["fraction"]["exact"] == 1
    assert rows["fraction"]["share_of_edit_distance"] == 0
    assert rows["big operator with limits"]["images"] == rows["prime"]["images"] == 1
    assert rows["accent"]["images"] == 1 and r"\left … \right" in rows
    shares = [rows[g]["share_of_edit_distance"] for g in ("big operator with limits", "accent", r"\left … \right")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-3)  # each image here has one structure
    assert sum(r["images"] for r in table["by_length"]) == 4
    assert errors.main([str(tmp_path / "missing.tsv")]) == 2
    assert "missing.tsv" in capsys.readouterr().err


def test_curve_continues_cpu_hours_across_stages_and_plots(tmp_path, capsys):
    for name, lines in (("one", [{"step": 10, "loss": 3.0, "cpu_s": 1800.0},
                                 {"step": 10, "val_bleu": 0.1, "val_edit_distance": 0.9},
                                 {"step": 20, "loss": 2.0, "cpu_s": 3600.0},
                                 {"step": 20, "val_bleu": 0.2, "val_edit_distance": 0.8}]),
                        ("two", [{"step": 5, "loss": 1.5, "cpu_s": 1800.0},
                                 {"step": 5, "val_bleu": 0.3, "val_edit_distance": 0.7}]),
                        # resumed from two's state at step 5: its count continues two's 1800 s
                        ("three", [{"step": 8, "loss": 1.4, "cpu_s": 2700.0},
                                   {"step": 8, "val_bleu": 0.4, "val_edit_distance": 0.6}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    png = tmp_path / "curve.png"
    stages = [str(tmp_path / name) for name in ("one", "two", "three")]
    assert curve.main([*stages, "--fork", stages[2], "--png", str(png)]) == 0
    points = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["stage"], p["step"], p["cpu_hours"], p["val_bleu"]) for p in points] == [
        ("one", 10, 0.5, 0.1), ("one", 20, 1.0, 0.2), ("two", 5, 1.5, 0.3), ("three", 8, 1.75, 0.4)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without --fork, three's count would be added after two's end.
    assert curve.main(stages) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["cpu_hours"] == 2.25
    assert curve.main([str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):  # a fork must be one of the later stages
        curve.main([stages[0], "--fork", stages[0]])
    assert "--fork" in capsys.readouterr().err


def test_glyph_scale_picks_the_best_mean_bleu_and_spreads_its_sample():
    from benchmarks.glyph_scale import best, spread

    rows = [{"data": d, "glyph_scale": s, "bleu": b, "edit_distance": e}
            for d, s, b, e in [("a", 1.0, 0.5, 0.25), ("b", 1.0, 0.25, 0.25),
                               ("a", 1.2, 0.5, 0.25), ("b", 1.2, 0.5, 0.125),
                               ("a", 1.4, 0.75, 0.5), ("b", 1.4, 0.25, 0.25)]]
    # 1.2 and 1.4 tie on mean BLEU (0.5); 1.2 has the lower mean edit distance.
    assert best(rows) == {"bench": "glyph_scale_best", "glyph_scale": 1.2, "mean_bleu": 0.5,
                          "mean_edit_distance": 0.1875}
    assert spread(10, 4) == [0, 2, 5, 7]
    assert spread(3, None) == spread(3, 5) == [0, 1, 2]


@pytest.mark.parametrize("args,message", [
    (["--scales", "1.0,3"], "--scales 1.0,3: glyph_scale must be a number from 0.5 to 2.0, got 3.0"),
    (["--scales", "1.0,big"], "--scales 1.0,big: expected comma-separated numbers"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--consensus", "9"], "--consensus must be from 1 to 8"),
])
def test_glyph_scale_refuses_bad_settings_before_reading(args, message, capsys):
    from benchmarks.glyph_scale import main as glyph_main

    with pytest.raises(SystemExit) as exit_:
        glyph_main(["--data", "never-read.pkl", *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_glyph_estimators_benchmark_rows_on_real_images():
    """One row per (method, change); an upscale doubles every estimate, so its ratio stays near 1."""
    from benchmarks.glyph_estimators import CHANGES, run
    from pix2tex.dataset.dataset import load_image_gray
    from pix2tex.preprocess import GLYPH_ESTIMATORS
    from tests.helpers import SAMPLE

    images = [load_image_gray(p) for p in sorted((SAMPLE / "images").glob("*.png"))[:6]]
    rows = list(run(images))
    assert [(r["method"], r["change"]) for r in rows] == [(m, c) for m in GLYPH_ESTIMATORS for c in CHANGES]
    for r in rows:
        assert r["n"] == 6 and r["p10"] <= r["median"] <= r["p90"] and r["ms"] > 0
        if r["change"] in ("none", "upscale2"):
            assert r["median"] == pytest.approx(1.0, abs=0.1)
