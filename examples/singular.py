"""Find and handle the singular matrices in a batch.

    python examples/singular.py

NumPy raises on the first singular matrix without saying which one; CuPy and
JAX silently return inf or NaN. gpuinv tells you exactly which matrices
failed, and why.
"""

import numpy as np

import gpuinv

rng = np.random.default_rng(1)
a = rng.standard_normal((6, 3, 3))
a[2] = [[1, 2, 3], [2, 4, 6], [1, 1, 1]]  # row 1 = 2 * row 0: singular
a[4, 1, 1] = np.nan                        # a sensor glitch

# 1. The default raises, naming every failed matrix by its batch index.
try:
    gpuinv.inv(a)
except gpuinv.SingularMatrixError as err:
    print("raised:", err)
    print("indices:", err.indices, " info:", err.info)

# 2. inv_ex never raises: one info code per matrix.
inverse, info = gpuinv.inv_ex(a)
for i, code in enumerate(info):
    status = {0: "ok", -1: "NaN or Inf in the input"}.get(int(code), f"singular (zero pivot at step {code})")
    print(f"matrix {i}: {status}")

# 3. Keep the pipeline running: NaN exactly where the inversion failed.
x = gpuinv.inv(a, on_singular="nan")
good = info == 0
print("valid inverses:", int(good.sum()), "of", len(a))
print("max |A X - I| over the valid ones:", np.abs(a[good] @ x[good] - np.eye(3)).max())
