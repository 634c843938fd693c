"""Invert a stack too large for one call, block by block, on a Dask cluster.

Runs anywhere on CPU:

    pip install 'gpuinv[dask]'
    python examples/dask_many_blocks.py

On a machine with GPUs, replace the LocalCluster by
``dask_cuda.LocalCUDACluster()`` (one worker per GPU) and build the stack
from CuPy blocks, see docs/dask.md.
"""

from __future__ import annotations

import logging
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import gpuinv


def main() -> None:
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # the raise demo below fails a task on purpose: keep its worker log quiet
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"cluster: {len(client.scheduler_info()['workers'])} worker processes")
        # 2,000,000 matrices of 4x4 float64 (256 MB), generated on the workers
        # in 20 blocks of 100,000: the client never holds the stack.
        n, count, block = 4, 2_000_000, 100_000
        rs = da.random.default_rng(42)
        a = rs.standard_normal((count, n, n), chunks=(block, n, n)) + n * da.eye(n)
        # Make a few matrices singular, in different blocks.
        bad = [7, 350_123, 1_999_999]
        mask = da.zeros(count, dtype=bool, chunks=block)
        for i in bad:
            mask = da.where(da.arange(count, chunks=block) == i, True, mask)
        a = da.where(mask[:, None, None], 0.0, a)

        res = gpuinv.inv_ex(a)  # lazy: nothing has run yet
        start = time.perf_counter()
        # One compute for both: each block is generated and inverted once.
        # The reduction over the inverses shows they are there without
        # bringing 256 MB back to the client.
        failed, finite = dask.compute(
            da.nonzero(res.info)[0], da.isfinite(res.inverse).all(axis=(1, 2)).sum()
        )
        elapsed = time.perf_counter() - start
        print(f"generated and inverted {count:,} matrices of {n}x{n} in {elapsed:.2f} s")
        print(f"failed at global indices {failed.tolist()} (expected {bad})")
        print(f"matrices with finite inverses: {int(finite):,}")

        try:
            gpuinv.inv(a).sum().compute()
        except gpuinv.SingularMatrixError as err:
            print(f"on_singular='raise' at compute time: {err}")

        # Check one block against NumPy.
        first = a[:1000].compute()
        ok = np.allclose(
            gpuinv.inv(a, on_singular="nan")[8:1000].compute(), np.linalg.inv(first[8:])
        )
        print(f"block 0 matches numpy.linalg.inv: {ok}")


if __name__ == "__main__":
    main()
