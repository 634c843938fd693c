"""Throughput of gpuinv against NumPy, SciPy and the other peers installed.

The benchmark of issue 2: every n in {2, 3, 4, 8, ..., 512}, float64 stacks of
about 256 MiB, the median of 3 timed runs after a warm-up, gpuinv on the best
device present (``device="auto"``) against ``numpy.linalg.inv``,
``scipy.linalg.inv`` and, where importable, CuPy, ``torch.linalg.inv_ex`` and
``jax.numpy.linalg.inv``, all on the same stacks in the same run. It prints
the table and writes JSON (and a plot with ``--plot``).

    python3 benchmarks/bench.py --json out.json --plot out.png [any `gpuinv bench` option]

The harness is the package's own (``gpuinv/cli/harness.py``, also behind the
``gpuinv bench`` command); this script only sets the issue's defaults. For a
fair NumPy baseline, run it without the OPENBLAS_CORETYPE override that some
machines set (README, "Measured numbers").
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from gpuinv.cli import main  # noqa: E402

DEFAULTS = ["--n", "2", "3", "4", "8", "16", "32", "64", "128", "256", "512",
            "--mib", "256", "--repeats", "3"]

if __name__ == "__main__":
    # Later options win in argparse, so the caller's own override the defaults.
    sys.exit(main(["bench", *DEFAULTS, *sys.argv[1:]]))
