"""Helpers the tests share: where the real data is, a tiny model, crafted files.

Fixtures live in conftest.py; plain functions and constants live here, so a test imports them
like any module (``from tests.helpers import SAMPLE``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch

from pix2tex.config import ModelConfig
from pix2tex.models import Model, get_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FORMULAS = SHARED / "formulas"
SAMPLE = SHARED / "images" / "im2latex_sample"

TINY = dict(channels=1, dim=32, encoder_depth=1, heads=2, num_layers=2, num_tokens=40, patch_size=16,
            max_height=64, max_width=128, max_seq_len=24)


def read_formulas(name: str, n: int | None = None, start: int = 0) -> list[str]:
    """Lines of a shared formula file (im2latex_val, k12_exam, hme100k, chem_units)."""
    lines = (FORMULAS / f"{name}.txt").read_text(encoding="utf-8").split("\n")
    lines = [line for line in lines if line.strip()]
    return lines[start:] if n is None else lines[start : start + n]


def tiny_model(encoder: str = "hybrid", seed: int = 0, **changes) -> Model:
    """A seeded model small enough for unit tests (random weights), in eval mode."""
    torch.manual_seed(seed)
    layers = {"backbone_layers": [1, 1]} if encoder == "hybrid" else {}
    return get_model(ModelConfig(encoder_structure=encoder, **{**TINY, **layers, **changes})).eval()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit gray) but carries no real pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b""))
