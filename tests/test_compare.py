"""benchmarks.compare: two models' predictions on the same images, side by side."""

from __future__ import annotations

import csv
import json

import pytest

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
