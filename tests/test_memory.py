"""Bounded memory: the CPU engine holds the output plus a few chunks per thread.

NumPy reports its array allocations to tracemalloc, so the traced peak of a
call, minus the output and info arrays, is what the engine's temporaries
took. The documented bound (docs/reliability.md, benchmarks/bench_memory.py
measures it on 1 GB stacks) is ``BOUND`` chunks of
``gpuinv.config.cpu_chunk_bytes`` per worker thread.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuinv

BOUND = 12  # the same as benchmarks/bench_memory.py
CHUNK = 128 << 10
THREADS = 2


def _nan_half(a):
    a[::2, 0, 0] = np.nan
    return a


def _singular_all(a):
    a[:, :, 0] = 0
    return a


def _mixed(a):
    a[::3, :, -1] = 0
    a[1::3, 0, 0] = np.inf
    return a


def _near_rank_two_less(a):
    n = a.shape[-1]
    k = max(n - 2, 1)
    rng = np.random.default_rng(1)
    return rng.standard_normal((len(a), n, k)) @ rng.standard_normal((len(a), k, n)) + 1e-9 * a


CASES = [(f, np.float64) for f in (None, _nan_half, _singular_all, _mixed, _near_rank_two_less)] + [
    (None, np.int32),  # converted to float64 chunk by chunk
    (_singular_all, np.int32),
]


@pytest.mark.parametrize("n", [2, 3, 4, 6, 12])
@pytest.mark.parametrize(
    "spoil, dtype", CASES, ids=[f"{getattr(f, '__name__', 'random')}-{np.dtype(d).name}" for f, d in CASES]
)
def test_peak_extra_memory_is_bounded(n, spoil, dtype, monkeypatch):
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", CHUNK)
    monkeypatch.setattr(gpuinv.config, "cpu_threads", THREADS)
    rng = np.random.default_rng(n)
    count = (8 << 20) // (n * n * 8)  # 8 MiB of float64: 64 chunks
    a = rng.standard_normal((count, n, n))
    if spoil is not None:
        a = spoil(a)
    if dtype is np.int32:
        a = np.round(a * 10).astype(np.int32)
    gpuinv.inv_ex(a[:64], device="cpu")  # the pool's threads exist before measuring
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        res = gpuinv.inv_ex(a, device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    beyond = peak - before - res.inverse.nbytes - res.info.nbytes
    assert beyond <= BOUND * CHUNK * THREADS, beyond / (CHUNK * THREADS)
