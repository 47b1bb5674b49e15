"""``python -m pix2tex.render``: render formula files to training images (see pix2tex.render.renderer)."""

import sys

from pix2tex.render.renderer import main

sys.exit(main())
