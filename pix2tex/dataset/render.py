"""The seed's ``python -m pix2tex.dataset.render``: the renderer lives in :mod:`pix2tex.render` now
(it serves the server, evaluation and reports as well as datasets); this name keeps working."""

import sys

from pix2tex.render.renderer import *  # noqa: F403 - the same public names as before the move
from pix2tex.render.renderer import __all__, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
