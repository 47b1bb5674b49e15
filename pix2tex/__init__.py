"""pix2tex: read an image of a math formula and write its LaTeX."""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["LatexOCR", "__version__"]


def __getattr__(name: str):
    # Importing torch takes seconds: load the model code only when LatexOCR is asked for.
    if name == "LatexOCR":
        from pix2tex.inference import LatexOCR

        return LatexOCR
    raise AttributeError(f"module 'pix2tex' has no attribute {name!r}")
