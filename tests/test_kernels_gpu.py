"""The small-matrix kernels on a real GPU: every instantiation against NumPy and cuBLAS.

Skipped where CuPy is missing or no CUDA device is usable. The cuBLAS
reference is ``cupy.linalg.inv`` (getrf/getri batched). Info codes are
checked against the host reference of tests/test_kernels_host.py, because
cuBLAS on a C-ordered stack factors the transpose, whose zero pivots sit at
other steps.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv.kernels as kernels
from gpuinv.engines.cpu import lu_pivot_info

cupy = pytest.importorskip("cupy")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cupy.cuda.is_available(), reason="no usable CUDA device"),
]

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, kernels.KERNEL_MAX_N[np.dtype(dt)] + 1)]


def case_id(case):
    return f"{case[0].name}-n{case[1]}"


def random_matrices(rng, m, n, dtype):
    x = rng.standard_normal((m, n, n))
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal((m, n, n))
    return x.astype(dtype)


def backward_error(a, x):
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    a, x = a.astype(wide), x.astype(wide)
    residual = np.linalg.norm(a @ x - np.eye(a.shape[-1]), 1, axis=(-2, -1))
    return residual / (np.linalg.norm(a, 1, axis=(-2, -1)) * np.linalg.norm(x, 1, axis=(-2, -1)))


def run_kernel(a_host, **kwargs):
    a = cupy.asarray(a_host)
    out = cupy.empty_like(a)
    info = cupy.empty(a.shape[0], dtype=np.int32)
    kernels.invert_small(a, out, info, **kwargs)
    np.testing.assert_array_equal(a.get(), a_host)  # the input is never written
    return out.get(), info.get()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_numpy_and_cublas(case):
    dtype, n = case
    spec = kernels.kernel_spec(n, dtype)
    rng = np.random.default_rng(n)
    m = 3 * spec.per_block + 5  # not a multiple of the block's matrices
    a = random_matrices(rng, m, n, dtype)
    x, info = run_kernel(a)
    np.testing.assert_array_equal(info, 0)
    eps = np.finfo(dtype).eps
    ours = backward_error(a, x)
    lapack = backward_error(a, np.linalg.inv(a))
    assert np.all(ours <= 10 * np.maximum(lapack, eps))
    cublas = cupy.linalg.inv(cupy.asarray(a)).get()
    cond = np.linalg.cond(a.astype(np.complex128), 1)
    diff = np.linalg.norm(x - cublas, 1, axis=(-2, -1)) / np.linalg.norm(cublas, 1, axis=(-2, -1))
    assert np.all(diff <= 10 * n * cond * eps)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_singular_and_nonfinite_at_random_positions(case):
    dtype, n = case
    rng = np.random.default_rng(100 + n)
    spec = kernels.kernel_spec(n, dtype)
    m = 2 * spec.per_block + 3
    a = random_matrices(rng, m, n, dtype)
    expected = np.zeros(m, dtype=np.int32)
    picks = rng.choice(m, size=min(m, 12), replace=False)
    for t, where in enumerate(picks):
        c = int(rng.integers(n))
        if t % 3 == 0:
            a[where, :, c] = 0  # zero column: first zero pivot at step c + 1
            expected[where] = c + 1
        elif t % 3 == 1:
            a[where, c, :] = 0  # zero row: met at the last step
            expected[where] = n
        else:
            a[where, c, int(rng.integers(n))] = [np.nan, np.inf, -np.inf][(t // 3) % 3]
            expected[where] = -1
    x, info = run_kernel(a)
    np.testing.assert_array_equal(info, expected)
    exact = expected > 0
    np.testing.assert_array_equal(info[exact], lu_pivot_info(a[exact])[0])
    assert np.all(np.isnan(x[expected == -1]))
    good = expected == 0
    alone, alone_info = run_kernel(np.ascontiguousarray(a[good]))
    np.testing.assert_array_equal(alone_info, 0)
    np.testing.assert_array_equal(x[good], alone)  # bad neighbours change nothing


@pytest.mark.parametrize("n", [2, 5, 8, 12, 16, 32])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_capped_grid_loops_over_every_tile(dtype, n):
    rng = np.random.default_rng(7)
    spec = kernels.kernel_spec(n, dtype)
    a = random_matrices(rng, 5 * spec.per_block + 1, n, dtype)
    full, full_info = run_kernel(a)
    for cap in (1, 2, 3):
        x, info = run_kernel(a, max_blocks=cap)
        np.testing.assert_array_equal(info, full_info)
        np.testing.assert_array_equal(x, full)


def test_runs_on_the_current_stream():
    rng = np.random.default_rng(8)
    a_host = random_matrices(rng, 1000, 6, np.float64)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        a = cupy.asarray(a_host)
        out = cupy.empty_like(a)
        info = cupy.empty(a.shape[0], dtype=np.int32)
        kernels.invert_small(a, out, info)
        # Work queued behind the kernel on the same stream sees its result.
        residual = cupy.abs(a @ out - cupy.eye(6)).max()
    stream.synchronize()
    assert float(residual) < 1e-8
    np.testing.assert_array_equal(info.get(), 0)


def test_empty_batch_launches_nothing():
    a = cupy.empty((0, 4, 4), dtype=np.float32)
    kernels.invert_small(a, cupy.empty_like(a), cupy.empty(0, dtype=np.int32))


def test_rejects_bad_arguments():
    a = cupy.ones((4, 3, 3))
    info = cupy.empty(4, dtype=np.int32)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.invert_small(a.transpose(0, 2, 1), cupy.empty_like(a), info)
    with pytest.raises(ValueError, match="out must have shape"):
        kernels.invert_small(a, cupy.empty((4, 3, 3), dtype=np.float32), info)
    with pytest.raises(ValueError, match="info must have shape"):
        kernels.invert_small(a, cupy.empty_like(a), cupy.empty(4, dtype=np.int64))
    with pytest.raises(TypeError, match="support float32"):
        kernels.invert_small(a.astype(np.float16), cupy.empty(a.shape, np.float16), info)
    big = cupy.ones((1, 33, 33))
    with pytest.raises(ValueError, match="1 <= n <= 32"):
        kernels.invert_small(big, cupy.empty_like(big), cupy.empty(1, dtype=np.int32))


@pytest.mark.slow
def test_more_than_2_to_the_31_elements():
    # 64-bit offsets: the last matrices lie past element 2^31 of the stack.
    n = 4
    m = 2**31 // (n * n) + 3 * 128 + 7
    need = 2 * m * n * n * 4 + m * 4
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < need * 1.2:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free device memory")
    a = cupy.empty((m, n, n), dtype=np.float32)
    a[...] = cupy.asarray(np.diag([2.0, 4.0, 0.5, 1.0]).astype(np.float32))
    a[-1] = cupy.asarray(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 4, 0]], np.float32))
    out = cupy.empty_like(a)
    info = cupy.empty(m, dtype=np.int32)
    kernels.invert_small(a, out, info)
    assert int(cupy.count_nonzero(info)) == 0
    expected = np.diag([0.5, 0.25, 2.0, 1.0]).astype(np.float32)
    np.testing.assert_array_equal(out[-2].get(), expected)
    np.testing.assert_array_equal(out[m // 2].get(), expected)
    np.testing.assert_allclose(out[-1].get(), np.linalg.inv(a[-1].get()))
    assert bool(cupy.all(out[:-1] == cupy.asarray(expected)))


def test_public_api_with_odd_strides_uses_the_kernels():
    pytest.importorskip("gpuinv.engines.cuda", reason="the CUDA engine is not in this build")
    import gpuinv
    from gpuinv.engines.cuda.routes import cuda_route

    rng = np.random.default_rng(9)
    for dtype, n in [(np.float64, 3), (np.float32, 8), (np.complex128, 13), (np.complex64, 32)]:
        assert cuda_route(n, dtype) == "kernel"
        base = random_matrices(rng, 2 * 7 * 3, n, dtype).reshape(7, 2, 3, n, n)
        strided = cupy.asarray(base)[:, 1, ::2].transpose(0, 1, 3, 2)  # odd strides, transposed
        host = base[:, 1, ::2].transpose(0, 1, 3, 2)
        result = gpuinv.inv_ex(strided)
        assert result.inverse.shape == host.shape
        np.testing.assert_array_equal(result.info.get(), 0)
        eps = np.finfo(dtype).eps
        ours = backward_error(host.reshape(-1, n, n), result.inverse.get().reshape(-1, n, n))
        lapack = backward_error(host.reshape(-1, n, n), np.linalg.inv(host).reshape(-1, n, n))
        assert np.all(ours <= 10 * np.maximum(lapack, eps))


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_subnormal_pivots_are_not_flushed_to_zero(dtype):
    # 5e-39 is subnormal in float32. With flush-to-zero (what CuPy's own
    # compile path adds) the kernel would see an exact zero pivot: info 1.
    # LAPACK, cuBLAS and the CPU engine invert it: 1 / 5e-39 = 2e38.
    tiny = np.array([[[5e-39]]], dtype=dtype)
    x, info = run_kernel(tiny)
    np.testing.assert_array_equal(info, [0])
    expected = np.array(1, dtype=dtype) / tiny[0, 0, 0]
    np.testing.assert_allclose(x[0, 0, 0], expected, rtol=4 * np.finfo(dtype).eps)
    assert abs(x[0, 0, 0] - 2e38) <= 1e32
    # A subnormal pivot in a larger matrix, on both kernel shapes.
    for n in (2, kernels.THREAD_MAX_N[np.dtype(dtype)] + 1):
        a = np.eye(n, dtype=dtype)
        a[0, 0] = 5e-39
        x, info = run_kernel(a[None])
        np.testing.assert_array_equal(info, [0])
        np.testing.assert_allclose(x[0, 0, 0], expected, rtol=4 * np.finfo(dtype).eps)


def test_subnormal_matrix_through_the_public_api():
    pytest.importorskip("gpuinv.engines.cuda", reason="the CUDA engine is not in this build")
    import gpuinv

    a = cupy.asarray(np.array([[[5e-39]]], dtype=np.float32))
    result = gpuinv.inv_ex(a)
    np.testing.assert_array_equal(result.info.get(), [0])
    np.testing.assert_allclose(result.inverse.get()[0, 0, 0], np.float32(1) / np.float32(5e-39), rtol=1e-6)


def test_kernels_are_compiled_without_flush_to_zero(monkeypatch):
    # The options the engine's own compiles pass to NVRTC, on this device.
    from gpuinv.kernels import _nvrtc

    seen = []
    real = _nvrtc.nvrtc_compile
    monkeypatch.setattr(_nvrtc, "_memory", {})
    monkeypatch.setenv("GPUINV_KERNEL_CACHE_DIR", "")
    monkeypatch.setattr(_nvrtc, "nvrtc_compile", lambda *a: seen.append(a[2]) or real(*a))
    kernels._kernel.cache_clear()
    try:
        run_kernel(np.array([[[2.0]]], dtype=np.float32))
    finally:
        kernels._kernel.cache_clear()
    cc = cupy.cuda.Device().compute_capability
    assert len(seen) == 1 and "-ftz=false" in seen[0] and "-ftz=true" not in seen[0]
    assert seen[0][-1] in (f"-arch=sm_{cc}",) or seen[0][-1].startswith("-arch=compute_")


# --- the rcond variants (KernelSpec.rcond) -------------------------------------------

RC_CASES = [(op, np.dtype(dt), n) for op, bounds in (("inv", kernels.KERNEL_MAX_N), ("chol", kernels.CHOL_MAX_N),
                                                     ("tril", kernels.TRI_MAX_N), ("triu", kernels.TRI_MAX_N),
                                                     ("diag", kernels.DIAG_MAX_N))
            for dt in DTYPES for n in range(1, bounds[np.dtype(dt)] + 1)
            if kernels.has_rcond_variant(n, dt, op)]


def _structured(op, a):
    """The matrices as the op's kernel reads them, made well posed (the CPU engine's test inputs)."""
    n = a.shape[-1]
    eye = np.eye(n, dtype=a.dtype)
    if op == "chol":
        return a @ np.conj(np.swapaxes(a, -1, -2)) + n * eye
    if op == "diag":
        return a * eye + 2 * eye
    mask = np.tril(np.ones((n, n), dtype=bool)) if op == "tril" else np.triu(np.ones((n, n), dtype=bool))
    return np.where(mask, a, 0).astype(a.dtype) + n * eye


@pytest.mark.parametrize("case", RC_CASES, ids=lambda c: f"{c[0]}-{c[1].name}-n{c[2]}")
def test_rcond_variant_on_the_gpu(case):
    # The rcond variant gives the plain kernel's inverse and info bit for bit,
    # and rcond as gpuinv._numerics.rcond_from_inverse computes it from them.
    from gpuinv._numerics import rcond_from_inverse

    op, dtype, n = case
    spec = kernels.kernel_spec(n, dtype, op)
    rng = np.random.default_rng(200 + n)
    a = _structured(op, random_matrices(rng, 2 * spec.per_block + 3, n, dtype))
    s = np.logspace(0, -3, n).astype(a.real.dtype)  # a smaller rcond, the structure kept
    a[1] = a[1] * s[:, None] * s[None, :] if op == "chol" else a[1] * s[None, :]
    a[2, n - 1, n - 1 if op != "chol" else 0] = np.nan  # info -1: rcond NaN
    d = cupy.asarray(a)
    outs = []
    for with_rcond in (False, True):
        out, info = cupy.empty_like(d), cupy.empty(len(a), dtype=np.int32)
        rc = cupy.empty(len(a), dtype=np.finfo(dtype).dtype) if with_rcond else None
        if op == "inv":
            kernels.invert_small(d, out, info, rcond=rc)
        elif op == "chol":
            kernels.invert_small_chol(d, out, info, rcond=rc)
        else:
            structure = {"tril": "lower triangular", "triu": "upper triangular", "diag": "diagonal"}[op]
            kernels.invert_small_structured(d, out, info, structure, rcond=rc)
        outs.append((out.get(), info.get(), None if rc is None else rc.get()))
    (x, info, _), (x_rc, info_rc, rc) = outs
    np.testing.assert_array_equal(info_rc, info)
    bits = np.dtype(f"u{np.finfo(dtype).dtype.itemsize}")
    np.testing.assert_array_equal(x_rc[info == 0].view(bits), x[info == 0].view(bits))
    assert info[2] == -1 and np.isnan(rc[2])
    want = rcond_from_inverse(a, x, info)  # a is what the kernel reads: _structured made it so
    ok = info == 0
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(rc[ok], want[ok], rtol=8 * (n + 2) * eps, atol=0)
