"""``python -m skcueco``: the main job (see :mod:`skcueco.cli.main`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
