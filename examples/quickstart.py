"""Quickstart: invert a million small matrices on the best device present.

    python examples/quickstart.py

Runs on the GPU when CuPy and a CUDA device are usable, else on the CPU.
"""

import time

import numpy as np

import gpuinv
from gpuinv._device import cuda_unavailable_reason

rng = np.random.default_rng(0)
a = rng.standard_normal((1_000_000, 4, 4)) + 4 * np.eye(4)  # one million 4x4 matrices

reason = cuda_unavailable_reason()
where = "the GPU" if reason is None else f"the CPU ({reason})"
print(f"gpuinv {gpuinv.__version__}: inverting {len(a):,} 4x4 float64 matrices on {where}")

t0 = time.perf_counter()
x = gpuinv.inv(a)  # NumPy in, NumPy out; raises SingularMatrixError naming bad matrices
first = time.perf_counter() - t0
# The first call pays a one-time start-up: the compiled CPU kernels' load
# (Numba; a compile on a machine's very first run) or the CUDA context.
t0 = time.perf_counter()
x = gpuinv.inv(a)
seconds = time.perf_counter() - t0

residual = np.abs(a[:1000] @ x[:1000] - np.eye(4)).max()
print(f"first call {first:.3f} s (with the one-time start-up); again: {seconds:.3f} s "
      f"({len(a) / seconds:,.0f} matrices/s); max |A X - I| = {residual:.1e}")

t0 = time.perf_counter()
np.linalg.inv(a)
print(f"numpy.linalg.inv on the same stack: {time.perf_counter() - t0:.3f} s")
