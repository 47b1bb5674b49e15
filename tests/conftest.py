"""Shared fixtures: paths to the real data in ../shared/data and a seeded torch."""

from __future__ import annotations

from pathlib import Path

import struct
import zlib

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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops on a shared 2-core box: a second intra-op thread only waits for a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE.is_dir(), f"missing real data at {SAMPLE}"
    return SAMPLE


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit gray) but carries no real pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))
