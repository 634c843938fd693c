"""Shared test helpers: random stacks with known conditioning, GPU detection."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Before any test imports JAX: by default it grabs 75% of GPU memory when its
# GPU backend starts, which would starve the CuPy tests that follow (the
# >2^31-element kernel test needs about 17 GB) or fail JAX's own start. The
# platform allocator also hands memory back as soon as JAX frees it. Set only
# where the caller did not choose (benchmarks/gpu_check.py sets the same).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")


def cuda_usable() -> bool:
    """True where CuPy is installed and a CUDA device answers."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def pytest_addoption(parser):
    parser.addoption(
        "--emu-all", action="store_true", default=False,
        help="emulate every kernel instantiation on the CPU (the tests marked exhaustive); by default "
             "tests/test_kernels*_emu.py run a representative sample (tests/_cuda_emu.py, sample())",
    )  # fmt: skip


def pytest_collection_modifyitems(config, items):
    # The exhaustive emulation (every instantiation, not only the sample) is
    # its own CI step (.ci/run): deselected, not skipped, unless --emu-all.
    if not config.getoption("--emu-all"):
        rest = [item for item in items if item.get_closest_marker("exhaustive") is not None]
        if rest:
            config.hook.pytest_deselected(items=rest)
            items[:] = [item for item in items if item.get_closest_marker("exhaustive") is None]
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="no usable CUDA device (cupy missing, no driver or no GPU)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def well_conditioned(rng, shape, n, dtype):
    """Random matrices with a dominant diagonal: condition numbers of a few units."""
    dtype = np.dtype(dtype)
    a = rng.standard_normal(tuple(shape) + (n, n))
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal(tuple(shape) + (n, n))
    a = a + 2 * np.sqrt(n) * np.eye(n)
    return a.astype(dtype)
