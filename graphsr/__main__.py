"""``python -m graphsr``: the same command line as ``graphsr``."""

import sys

from graphsr.cli import main

sys.exit(main())
