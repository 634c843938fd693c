"""``python -m gpuinv.cli``: the same as the ``gpuinv`` command."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
