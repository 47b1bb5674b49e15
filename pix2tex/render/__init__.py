"""The TeX renderer: formulas to PNG images with real latex and dvipng, in a sandbox.

It makes the training data (``python -m pix2tex.render``, called by create_data.sh) and serves
everything else that draws a formula: ``pix2tex serve``'s ``/v1/render``, ``pix2tex.eval --render``,
the reports and the demo.

- :mod:`pix2tex.render.tex`: one sandboxed latex + dvipng pass: the checks before TeX, the TeX
  source, the bubblewrap sandbox.
- :mod:`pix2tex.render.allowlist`: the commands and environments a formula may use.
- :mod:`pix2tex.render.renderer`: batches of formulas, isolating the ones TeX refuses, whole
  formula files to image folders and labels (:func:`render_dataset`), and :func:`render_images`.

``python -m pix2tex.dataset.render``, the seed's name, runs the same command.
"""

from pix2tex.render.renderer import (
    DEFAULT_DPI,
    FONTS,
    RenderError,
    RenderResult,
    RenderSettings,
    check_formula,
    render_dataset,
    render_images,
)

__all__ = ["DEFAULT_DPI", "FONTS", "RenderError", "RenderResult", "RenderSettings", "check_formula",
           "render_dataset", "render_images"]
