"""``python -m rfgraph``: the same command line as the ``rfgraph`` script."""

import sys

from .cli import main

sys.exit(main())
