"""``python -m benchmark.cli``: the same as the ``shiftbench`` console script."""
import sys

from . import main

sys.exit(main())
