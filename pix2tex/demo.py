"""``make demo``: read formula images with the bundled model, no training, no download.

    python -m pix2tex.demo [IMAGE…]

Renders the formulas of ``pix2tex/dataset/demo_formulas.txt`` with TeX into a temporary folder,
reads them back with the model that ships in the package, and prints for each (by its number) the
prediction and the reference.  Extra image paths are read too (no reference to compare with).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pix2tex.checkpoint import CheckpointError
from pix2tex.inference import LatexOCR
from pix2tex.metrics import score
from pix2tex.normalize import normalize
from pix2tex.render import RenderResult, render_images

DEMO_FORMULAS = Path(__file__).resolve().parent / "dataset" / "demo_formulas.txt"


def demo_formulas() -> list[str]:
    """The formulas of ``make demo`` (``pix2tex/dataset/demo_formulas.txt``, one a line)."""
    return [line for line in DEMO_FORMULAS.read_text(encoding="utf-8").splitlines() if line.strip()]


def render_demo(folder: str | os.PathLike) -> list[RenderResult]:
    """The demo formulas rendered as ``make demo`` renders them: Computer Modern at 120 dpi (one
    font, one size: a sound glyph estimator measures them alike)."""
    return render_images(demo_formulas(), "cm", 120, folder)


def main(argv: Sequence[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    formulas = demo_formulas()
    try:
        ocr = LatexOCR()
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 0
    with tempfile.TemporaryDirectory(prefix="pix2tex-demo-") as tmp:
        paths, references = [], []
        for k, (formula, result) in enumerate(zip(formulas, render_demo(tmp), strict=True)):
            if result.image is None:
                print(f"warning: could not render demo formula {k + 1}: {result.error}", file=sys.stderr)
                continue
            path = Path(tmp) / f"demo_{k + 1}.png"
            result.image.save(path)
            paths.append(str(path))
            references.append(normalize(formula))
        predictions = ocr.predict(paths + extra)
        for k, (pred, ref) in enumerate(zip(predictions, references + [None] * len(extra), strict=True)):
            # The rendered demo images live in a folder that is gone when the demo ends: name them
            # by their formula instead of printing a path nobody can open.
            print(f"demo formula {k + 1}" if ref is not None else pred.source)
            if pred.error is not None:
                print(f"  error: {pred.error}")
                status = 1
                continue
            print(f"  predicted: {pred.latex}")
            if ref is not None:
                mark = "exact" if pred.latex == ref else "differs"
                print(f"  reference: {ref}  ({mark})")
        own = [p.latex or "" for p in predictions[: len(references)]]
        if references:
            print(f"\n{len(references)} rendered demo formulas: {score(own, references)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
