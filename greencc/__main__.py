"""``python -m greencc``: the same command line as ``greencc``."""

import sys

from greencc.cli import main

sys.exit(main())
