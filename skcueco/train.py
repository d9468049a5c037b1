"""``python -m skcueco.train``: command-line training, also under ``torchrun``.

The implementation lives in :mod:`skcueco.cli.train`; this module keeps the
documented command working.
"""

import sys

from .cli.train import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
