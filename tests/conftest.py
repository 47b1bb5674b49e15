"""Shared fixtures: paths to the real data in ../shared/data and a seeded torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FORMULAS = SHARED / "formulas"
SAMPLE = SHARED / "images" / "im2latex_sample"


def read_formulas(name: str, n: int | None = None, start: int = 0) -> list[str]:
    """Lines of a shared formula file (im2latex_val, k12_exam, hme100k, chem_units)."""
    lines = (FORMULAS / f"{name}.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    return lines[start:] if n is None else lines[start : start + n]


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE.is_dir(), f"missing real data at {SAMPLE}"
    return SAMPLE
