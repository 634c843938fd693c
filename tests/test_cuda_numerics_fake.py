"""Issue 10's CUDA routes (rcond, assume_a, solve) run on the CPU against the CuPy stand-in.

tests/_fake_cupy.py plus tests/_fake_cupy_numerics.py: device arrays are
NumPy arrays, cuBLAS getrf/getrs and cuSOLVER potrf/potrs batched read and
write through the pointers the engine computes. Every result is compared
with the CPU engine on the same input, and every call is made with every
host synchronization (``.get()``, ``asnumpy``, ``bool``, ``item``) turned
into an error, except where the public function is documented to sync
(``inv`` and ``solve`` reading info).
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import gpuinv
import gpuinv.kernels
from gpuinv._numerics import STRUCTURES
from gpuinv.engines import _cuda_chol


def _load(name, file):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_fake_cupy = _load("gpuinv_tests_fake_cupy", "_fake_cupy.py")
_extra = _load("gpuinv_tests_fake_cupy_numerics", "_fake_cupy_numerics.py")


@pytest.fixture
def fake(monkeypatch):
    from gpuinv import _dispatch
    from gpuinv.engines import cuda as cuda_module

    def without_kernels(n, dtype):  # the stand-in has no NVRTC (see test_cuda_fake.py)
        return "cusolver" if n >= _dispatch.CUDA_CUSOLVER_MIN_N else "cublas"

    monkeypatch.setattr(cuda_module, "cuda_route", without_kernels)
    # The positive definite route on cuSOLVER here; the Cholesky kernel's
    # route has its own tests below (fixture fake_kernels).
    monkeypatch.setattr(_cuda_chol, "chol_route", lambda n, dtype: "cusolver")
    with _fake_cupy.installed(monkeypatch) as module:
        calls: list = []
        _extra.install(module, monkeypatch, calls)
        module.extra_calls = calls
        yield module


@contextmanager
def no_host_sync(fake, monkeypatch):
    """Any read of device data by the host raises inside the block."""

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronization")

    with monkeypatch.context() as m:
        m.setattr(fake.ndarray, "get", refuse)
        m.setattr(fake.ndarray, "__bool__", refuse)
        m.setattr(fake.ndarray, "item", refuse)
        m.setattr(fake.ndarray, "tolist", refuse)
        m.setattr(fake, "asnumpy", refuse)
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(31)


def dev(fake, x):
    return fake.asarray(x)


def spd(rng, batch, n, dtype=np.float64):
    g = rng.standard_normal(batch + (n, n))
    if np.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal(batch + (n, n))
    return (g @ np.conj(np.swapaxes(g, -1, -2)) + n * np.eye(n)).astype(dtype)


def host(x):
    return np.asarray(x.view(np.ndarray) if hasattr(x, "view") else x)


DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def close(got, want, dtype):
    tol = 1e-3 if np.dtype(dtype).itemsize <= 8 and np.dtype(dtype) != np.float64 else 1e-10
    got, want = host(got), host(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=tol, atol=tol * max(1, np.abs(want[ok]).max(
        initial=0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 6])
def test_rcond_on_device(fake, monkeypatch, rng, dtype, n):
    a = rng.standard_normal((7, n, n)).astype(dtype) + 2 * np.eye(n, dtype=dtype)
    a[1] = 0
    a[4, 0, 0] = np.nan
    d = dev(fake, a)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(d, rcond=True)
    assert type(res.rcond).__module__ == "cupy" and type(res.info).__module__ == "cupy"
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.rcond, want.rcond, dtype)
    assert host(res.rcond).dtype == want.rcond.dtype


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values()) - {"general"}))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("lower", [False, True])
def test_structures_match_cpu(fake, monkeypatch, rng, structure, dtype, n, lower):
    a = spd(rng, (2, 3), n, dtype)
    a[0, 1, n - 1, n - 1] = 0  # singular for diagonal/triangular
    a[1, 0, 0, 0] = -5  # not positive definite at step 1
    a[1, 2, n - 1, 0] = np.nan  # lower triangle only
    d = dev(fake, a)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.inv_ex(d, assume_a=structure, lower=lower, rcond=True)
    want = gpuinv.inv_ex(a, assume_a=structure, lower=lower, rcond=True, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    ok = want.info == 0
    close(host(res.inverse)[ok], want.inverse[ok], dtype)
    if structure not in ("symmetric", "hermitian"):  # those take the LU route's singular output
        assert np.isnan(host(res.inverse)[~ok]).all()
    close(res.rcond, want.rcond, dtype)
    if structure in ("positive definite", "symmetric", "hermitian"):
        x = host(res.inverse)
        t = np.swapaxes(x, -1, -2)
        if structure != "symmetric" and np.dtype(dtype).kind == "c":
            t = t.conj()
        np.testing.assert_array_equal(x, t)


def test_positive_definite_uses_potrf_and_single_rhs_potrs(fake, monkeypatch, rng):
    a = spd(rng, (4,), 5)
    with no_host_sync(fake, monkeypatch):
        gpuinv.inv_ex(dev(fake, a), assume_a="pos")
    kinds = [c[0] for c in fake.extra_calls]
    assert kinds.count("potrfBatched") == 1
    assert kinds.count("potrsBatched") == 5  # one per column of the identity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,vector", [(1, 1, False), (3, 2, False), (4, 1, True), (7, 3, False)])
def test_solve_matches_cpu(fake, monkeypatch, rng, dtype, n, k, vector):
    a = rng.standard_normal((6, n, n)).astype(dtype) + 2 * n * np.eye(n, dtype=dtype)
    a[2, :, n // 2] = 0
    a[4, n - 1, 0] = np.inf
    b = rng.standard_normal((n,) if vector else (6, n, k)).astype(dtype)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), rcond=True)
    want = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    assert host(res.solution).shape == want.solution.shape
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.solution, want.solution, dtype)
    close(res.rcond, want.rcond, dtype)
    assert ("getrsBatched", 6, k) in fake.extra_calls


@pytest.mark.parametrize("structure", sorted(set(STRUCTURES.values()) - {"general"}))
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_structured_solve_matches_cpu(fake, monkeypatch, rng, structure, dtype):
    n = 4
    a = spd(rng, (5,), n, dtype)
    a[1, 2, 2] = 0
    a[3, 0, 0] = -1
    b = rng.standard_normal((5, n, 2)).astype(dtype)
    with no_host_sync(fake, monkeypatch):
        res = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a=structure)
    want = gpuinv.solve_ex(a, b, assume_a=structure, device="cpu")
    np.testing.assert_array_equal(host(res.info), want.info)
    close(res.solution, want.solution, dtype)


def test_broadcast_solve_and_policies(fake, rng):
    a = rng.standard_normal((3, 1, 3, 3)) + 6 * np.eye(3)
    b = rng.standard_normal((4, 3, 2))
    x = gpuinv.solve(dev(fake, a), dev(fake, b))
    np.testing.assert_allclose(host(x), np.linalg.solve(a, b), rtol=1e-10)
    a[1, 0] = 0
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.solve(dev(fake, a), dev(fake, b))
    assert err.value.indices[0] == (1, 0)
    x = gpuinv.solve(dev(fake, a), dev(fake, b), on_singular="nan")
    assert np.isnan(host(x)[1]).all()


def test_inv_warns_for_cupy_input(fake, rng):
    a = np.stack([np.diag([1.0, 1e-20]), np.eye(2)])
    with pytest.warns(gpuinv.LinAlgWarning) as rec:
        gpuinv.inv(dev(fake, a))
    assert rec[0].message.indices == [(0,)]


def test_numpy_input_on_the_cuda_engine(fake, rng):
    a = spd(rng, (5,), 4)
    b = rng.standard_normal((5, 4, 1))
    res = gpuinv.inv_ex(a, rcond=True, device="cuda")
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    assert type(res.inverse) is np.ndarray and type(res.rcond) is np.ndarray
    close(res.rcond, want.rcond, np.float64)
    pos = gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cuda")
    assert type(pos.inverse) is np.ndarray
    close(pos.inverse, want.inverse, np.float64)
    x = gpuinv.solve(a, b, device="cuda")
    assert type(x) is np.ndarray
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10)


def test_cupy_input_on_cpu_device(fake, rng):
    a = spd(rng, (3,), 3)
    res = gpuinv.inv_ex(dev(fake, a), assume_a="pos", rcond=True, device="cpu")
    assert type(res.rcond).__module__ == "cupy"
    x = gpuinv.solve(dev(fake, a), dev(fake, np.ones(3)), device="cpu")
    assert type(x).__module__ == "cupy"
    np.testing.assert_allclose(host(x), np.linalg.solve(a, np.ones(3)), rtol=1e-12)


def test_empty_stacks(fake):
    res = gpuinv.inv_ex(dev(fake, np.zeros((0, 3, 3))), assume_a="pos", rcond=True)
    assert host(res.rcond).shape == (0,)
    sol = gpuinv.solve_ex(dev(fake, np.eye(3)[None]), dev(fake, np.zeros((1, 3, 0))))
    assert host(sol.solution).shape == (1, 3, 0)


# --- positive definite, small n: gpuinv's Cholesky kernel (inv_chol_thread) ------------


@pytest.fixture
def fake_kernels(monkeypatch):
    """The fake CuPy with the real dispatch, and the kernels on the CPU emulation of CUDA
    (tests/_cuda_emu.py; the CPU engine stands in where g++ cannot build it)."""
    from gpuinv.engines import cuda_engine

    cuda_engine.cache_clear()
    with _fake_cupy.installed(monkeypatch) as module:
        calls: list = []
        _extra.install(module, monkeypatch, calls)
        module.extra_calls = calls
        module.install_kernel_stand_in(monkeypatch)
        yield module
    cuda_engine.cache_clear()


def chol_launches(fake):
    return [entry for entry in fake.state.log if entry[0] == "invert_small_chol"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lower", [False, True])
def test_positive_definite_small_n_runs_the_cholesky_kernel(fake_kernels, monkeypatch, rng, dtype, lower):
    fake = fake_kernels
    n = gpuinv.kernels.CHOL_MAX_N[np.dtype(dtype)]
    for size in sorted({1, 3, n}):
        assert _cuda_chol.chol_route(size, dtype) == "kernel"
        a = spd(rng, (2, 5), size, dtype)
        a[0, 1, size - 1, size - 1] = -1 if size > 1 else 0  # the leading minor of order n fails
        a[1, 3, 0, 0] = -2  # order 1
        a[1, 4, size - 1, 0] = np.nan if lower else a[1, 4, size - 1, 0]  # only where it is read
        a[1, 4, 0, size - 1] = a[1, 4, 0, size - 1] if lower else np.nan
        # What is not read may hold anything.
        junk = a.copy()
        if size > 1:
            rows, cols = np.triu_indices(size, 1) if lower else np.tril_indices(size, -1)
            junk[..., rows, cols] = np.inf
        before = len(chol_launches(fake))
        with no_host_sync(fake, monkeypatch):
            res = gpuinv.inv_ex(dev(fake, junk), assume_a="positive definite", lower=lower, rcond=True)
        assert len(chol_launches(fake)) == before + 1  # one launch for the whole stack
        want = gpuinv.inv_ex(a, assume_a="positive definite", lower=lower, rcond=True, device="cpu")
        np.testing.assert_array_equal(host(res.info), want.info)
        assert host(res.info)[0, 1] == size and host(res.info)[1, 3] == 1
        assert host(res.info)[1, 4] == -1
        close(res.inverse, want.inverse, dtype)
        close(res.rcond, want.rcond, dtype)
        x = host(res.inverse)
        np.testing.assert_array_equal(x, np.conj(np.swapaxes(x, -1, -2)))  # exactly Hermitian
    assert not [c for c in fake.extra_calls if c[0] in ("potrfBatched", "potrsBatched")]


def test_positive_definite_above_chol_max_n_stays_on_cusolver(fake_kernels, rng):
    fake = fake_kernels
    n = gpuinv.kernels.CHOL_MAX_N[np.dtype(np.complex128)] + 1
    assert _cuda_chol.chol_route(n, np.complex128) == "cusolver"
    a = spd(rng, (3,), n, np.complex128)
    res = gpuinv.inv_ex(dev(fake, a), assume_a="pos")
    close(res.inverse, gpuinv.inv_ex(a, assume_a="pos", device="cpu").inverse, np.complex128)
    assert not chol_launches(fake)
    assert [c[0] for c in fake.extra_calls].count("potrfBatched") == 1


def test_positive_definite_numpy_input_and_solve_rcond_use_the_kernel(fake_kernels, rng):
    fake = fake_kernels
    a = spd(rng, (4,), 4, np.float64)
    got = gpuinv.inv_ex(a, assume_a="pos", device="cuda")
    want = gpuinv.inv_ex(a, assume_a="pos", device="cpu")
    assert isinstance(got.inverse, np.ndarray)
    close(got.inverse, want.inverse, np.float64)
    np.testing.assert_array_equal(got.info, want.info)
    b = rng.standard_normal((4, 4, 2))
    sol = gpuinv.solve_ex(dev(fake, a), dev(fake, b), assume_a="pos", rcond=True)
    close(sol.rcond, gpuinv.inv_ex(a, assume_a="pos", rcond=True, device="cpu").rcond, np.float64)
    assert len(chol_launches(fake)) == 2
