"""``python -m gpuinv.kernels``: the kernels' build-time checks (gpuinv/kernels/tooling/cli.py)."""

import sys

from .tooling.cli import main

if __name__ == "__main__":
    sys.exit(main())
