"""``python -m ats``: the command line of :mod:`ats.cli`."""

import sys

from ats.cli import main

sys.exit(main())
