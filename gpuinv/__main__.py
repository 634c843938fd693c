"""``python -m gpuinv``: the same as the ``gpuinv`` command."""

import sys

from .cli import main

sys.exit(main())
