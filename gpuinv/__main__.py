"""``python -m gpuinv``: the same as the ``gpuinv`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
