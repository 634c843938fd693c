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


# What the fixture below runs in its second process. Errors are its own: a
# test that finds nothing in a cache builds or compiles what it needs itself.
_ALONGSIDE = """
import sys
import numpy as np
from gpuinv.engines.cpu import warm_up
# The dtypes in the order the suite first meets them.
warm_up(dtypes=(np.float64, np.float32, np.complex128, np.complex64), ns=range(1, 65))
sys.path.insert(0, "tests")
import _cuda_emu
if _cuda_emu.available() is None:
    from gpuinv import kernels
    _cuda_emu.build_all(kernels.instantiations(), jobs=1)
"""


@pytest.fixture(scope="session", autouse=True)
def _build_alongside():
    """Compile the CPU engine's Numba kernels and build the kernels' emulation in a
    second process while the tests run.

    On a fresh machine the suite's first run spends minutes compiling: the
    Numba kernels (about 100 s; the written-out ones grow as n^3,
    engines/_unrolled.py) and the emulation executables, mostly one at a time
    in the test process while the second core idles. This process fills the
    same disk caches (Numba's, ``GPUINV_CACHE_DIR``, ``build/cuda_emu``) on
    that core; a test that needs something before it is there compiles or
    builds it itself, exactly as without this fixture (both caches are written
    atomically, so two writers are safe). Nothing here changes what a test
    runs or asserts. Off where the compiled route is (``GPUINV_CPU_COMPILED=0``:
    CI's second pass, whose caches the first filled); stopped at the end.
    """
    import subprocess
    import sys

    if os.environ.get("GPUINV_CPU_COMPILED", "1") == "0":
        yield
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A session of its own, so that the end of the test run stops its g++ too.
    proc = subprocess.Popen([sys.executable, "-c", _ALONGSIDE], cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield
    if proc.poll() is None:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


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
