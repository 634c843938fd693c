"""The triangular and diagonal kernels' per-matrix math, compiled for the host from the header the GPU runs.

g++ compiles gpuinv/kernels/triangular.cuh (after inverse.cuh and
cholesky.cuh, unchanged) into a shared library called through ctypes. For
every dtype and every n up to 8 (the dispatched ones, ``TRI_MAX_N`` and
``DIAG_MAX_N``, and those ``--check --all`` reports) it is checked against
LAPACK ``trtri`` (through SciPy), NumPy and the CPU engine's
``assume_a="lower triangular" | "upper triangular" | "diagonal"``: accuracy
on random and graded ill-conditioned matrices (within a factor of the
condition number times eps, never LAPACK's rounded digits), exact zeros
outside the structure, only the triangle (or the diagonal) read, trtri's
info on zero diagonals, -1 and NaN for non-finite input.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg.lapack
from _kernel_cases import DTYPES, GXX, build_tri_host_lib, eps, host_tri_invert, triangular_matrices

import gpuinv
import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(GXX is None, reason="g++ is not installed")

STRUCTURE = {"tril": "lower triangular", "triu": "upper triangular", "diag": "diagonal"}
TRI_CASES = [(op, np.dtype(dt), n) for op in ("tril", "triu") for dt in DTYPES for n in range(1, 9)]
DIAG_CASES = [(np.dtype(dt), n) for dt in DTYPES for n in range(1, 9)]


def tri_id(case):
    op, dt, n = case
    dispatched = n <= kernels.TRI_MAX_N[dt]
    return f"{op}-{dt.name}-n{n}" + ("" if dispatched else "-notdispatched")


def diag_id(case):
    dt, n = case
    return f"{dt.name}-n{n}" + ("" if n <= kernels.DIAG_MAX_N[dt] else "-notdispatched")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build_tri_host_lib(tmp_path_factory.mktemp("tri_host"))


def outside(n, op):
    """The mask of the entries the structure does not read."""
    if op == "diag":
        return ~np.eye(n, dtype=bool)
    return np.triu(np.ones((n, n), dtype=bool), 1) if op == "tril" else np.tril(np.ones((n, n), dtype=bool), -1)


def with_garbage(rng, a, op):
    """``a`` with the entries the structure does not read replaced by large random
    values, NaN and Inf: the kernel must not read them."""
    n = a.shape[-1]
    junk = a.copy()
    mask = outside(n, op)
    noise = rng.standard_normal(a.shape) * 1e3
    if a.dtype.kind == "c":
        noise = noise + 1j * rng.standard_normal(a.shape)
    if n > 1:
        far = (0, n - 1) if op != "tril" else (n - 1, 0)  # the corner that is read
        i, j = (far[1], far[0])  # ...and its mirror, which is not
        noise[:, i, j] = np.nan
        noise[1::2, i, j] = np.inf
    junk[:, mask] = noise[:, mask].astype(a.dtype)
    return junk


def trtri(a, lower):
    """LAPACK trtri (non-unit diagonal) per matrix: (inverse, info)."""
    (fn,) = scipy.linalg.lapack.get_lapack_funcs(("trtri",), (a,))
    out = np.empty_like(a)
    info = np.empty(len(a), dtype=np.int32)
    for i, x in enumerate(a):
        out[i], info[i] = fn(x, lower=int(lower), unitdiag=0)
    return out, info


def wide(a):
    return a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)


def relative_error(x, ref):
    return np.linalg.norm(wide(x) - wide(ref), 1, axis=(-2, -1)) / np.linalg.norm(wide(ref), 1, axis=(-2, -1))


@pytest.mark.parametrize("case", TRI_CASES, ids=tri_id)
def test_triangular_accuracy_exact_zeros_and_triangle_only(lib, case):
    op, dt, n = case
    lower = op == "tril"
    rng = np.random.default_rng(100 + 10 * n + dt.num + 7 * lower)
    a = triangular_matrices(rng, 200, n, dt, lower)
    x, info = host_tri_invert(lib, a, op)
    np.testing.assert_array_equal(info, 0)
    # Exact zeros in the other triangle (+0.0, as the CPU engine writes).
    zeros = x[:, outside(n, op)]
    assert np.all(zeros == 0) and not np.any(np.signbit(zeros.real))
    # w_jj = 1 / a_jj, one correctly rounded division for the real types.
    if dt.kind == "f":
        np.testing.assert_array_equal(np.diagonal(x, axis1=1, axis2=2), 1 / np.diagonal(a, axis1=1, axis2=2))
    # Forward error against the inverse in the wide type, and against trtri.
    cond = np.linalg.cond(wide(a), 1)
    exact = np.linalg.inv(wide(a))
    assert np.all(relative_error(x, exact) <= 10 * n * cond * eps(dt))
    ref, ref_info = trtri(a, lower)
    np.testing.assert_array_equal(ref_info, 0)
    assert np.all(relative_error(x, ref) <= 20 * n * cond * eps(dt))
    # Only the triangle is read: garbage (NaN and Inf included) elsewhere changes nothing.
    junk, junk_info = host_tri_invert(lib, with_garbage(rng, a, op), op)
    np.testing.assert_array_equal(junk_info, 0)
    np.testing.assert_array_equal(junk, x)


@pytest.mark.parametrize("case", TRI_CASES, ids=tri_id)
def test_triangular_graded_ill_conditioned(lib, case):
    op, dt, n = case
    lower = op == "tril"
    rng = np.random.default_rng(200 + 10 * n + dt.num + 7 * lower)
    grade = 1e4 if dt in (np.dtype(np.float32), np.dtype(np.complex64)) else 1e10
    a = triangular_matrices(rng, 200, n, dt, lower, grade=grade if n > 1 else None)
    x, info = host_tri_invert(lib, a, op)
    np.testing.assert_array_equal(info, 0)
    cond = np.linalg.cond(wide(a), 1)
    assert np.all(relative_error(x, np.linalg.inv(wide(a))) <= 10 * n * cond * eps(dt))


@pytest.mark.parametrize("case", TRI_CASES, ids=tri_id)
def test_triangular_zero_diagonal_gives_trtri_info_and_nan(lib, case):
    op, dt, n = case
    lower = op == "tril"
    rng = np.random.default_rng(300 + 10 * n + dt.num + 7 * lower)
    a = triangular_matrices(rng, 40, n, dt, lower)
    expected = np.zeros(len(a), dtype=np.int32)
    idx = np.arange(n)
    for t in range(30):  # one zero (and sometimes a second one after it)
        k = int(rng.integers(n))
        a[t, k, k] = 0
        expected[t] = k + 1
        if t % 3 == 0 and k + 1 < n:
            a[t, n - 1, n - 1] = 0
    a[30, idx, idx] = 0  # all zero: step 1
    expected[30] = 1
    x, info = host_tri_invert(lib, a, op)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    # trtri's verdict, the CPU engine's codes and NaN output.
    _, ref_info = trtri(a, lower)
    np.testing.assert_array_equal(ref_info, expected)
    cpu = gpuinv.inv_ex(a, assume_a=STRUCTURE[op], device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), expected)
    assert np.all(np.isnan(np.asarray(cpu.inverse)[expected != 0]))
    # Good matrices are unaffected by their neighbours.
    alone, alone_info = host_tri_invert(lib, a[expected == 0], op)
    np.testing.assert_array_equal(alone_info, 0)
    np.testing.assert_array_equal(x[info == 0], alone)


@pytest.mark.parametrize("case", TRI_CASES, ids=tri_id)
def test_triangular_nonfinite_in_the_part_read(lib, case):
    op, dt, n = case
    lower = op == "tril"
    rng = np.random.default_rng(400 + 10 * n + dt.num + 7 * lower)
    a = triangular_matrices(rng, 5, n, dt, lower)
    for k, value in enumerate((np.nan, np.inf, -np.inf)):
        i = int(rng.integers(n))
        j = int(rng.integers(i + 1))  # on or below the diagonal
        if lower:
            a[k, i, j] = value
        else:
            a[k, j, i] = value
    # A NaN imaginary part (or a NaN) in the far corner of the triangle.
    corner = (n - 1, 0) if lower else (0, n - 1)
    a[3][corner] = complex(1.0, np.nan) if dt.kind == "c" else np.nan
    # Non-finite wins over a zero diagonal, as on the CPU engine.
    a[4, 0, 0] = 0
    a[4][corner] = np.inf if n > 1 else a[4][corner]
    if n == 1:
        a[4, 0, 0] = np.inf
    x, info = host_tri_invert(lib, a, op)
    np.testing.assert_array_equal(info, -1)
    assert np.all(np.isnan(x))
    cpu = gpuinv.inv_ex(a, assume_a=STRUCTURE[op], device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), -1)


@pytest.mark.parametrize("case", TRI_CASES, ids=tri_id)
def test_triangular_matches_the_cpu_engine(lib, case):
    op, dt, n = case
    lower = op == "tril"
    rng = np.random.default_rng(500 + 10 * n + dt.num + 7 * lower)
    a = with_garbage(rng, triangular_matrices(rng, 100, n, dt, lower), op)
    x, info = host_tri_invert(lib, a, op)
    cpu = gpuinv.inv_ex(a, assume_a=STRUCTURE[op], device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), info)
    ref = np.asarray(cpu.inverse)
    # The same exact zeros, the same triangle.
    np.testing.assert_array_equal(ref[:, outside(n, op)], x[:, outside(n, op)])
    clean = np.where(outside(n, op), 0, a)
    cond = np.linalg.cond(wide(clean), 1)
    assert np.all(relative_error(x, ref) <= 20 * n * cond * eps(dt))


def test_upper_is_the_transpose_of_lower_without_conjugate(lib):
    # inv(U) = inv(U^T)^T, a plain transpose for complex matrices too.
    rng = np.random.default_rng(600)
    for dt in DTYPES:
        for n in (1, 3, 8):
            u = triangular_matrices(rng, 20, n, dt, lower=False)
            x, info = host_tri_invert(lib, u, "triu")
            y, yinfo = host_tri_invert(lib, np.ascontiguousarray(np.swapaxes(u, 1, 2)), "tril")
            np.testing.assert_array_equal(info, yinfo)
            np.testing.assert_array_equal(x, np.swapaxes(y, 1, 2))


@pytest.mark.parametrize("case", DIAG_CASES, ids=diag_id)
def test_diagonal_exact_and_diagonal_only(lib, case):
    dt, n = case
    rng = np.random.default_rng(700 + 10 * n + dt.num)
    d = rng.uniform(0.1, 10, (100, n)) * rng.choice([-1.0, 1.0], (100, n))
    if dt.kind == "c":
        d = d * np.exp(1j * rng.uniform(0, 2 * np.pi, (100, n)))
    d = d.astype(dt)
    a = np.zeros((100, n, n), dtype=dt)
    idx = np.arange(n)
    a[:, idx, idx] = d
    x, info = host_tri_invert(lib, a, "diag")
    np.testing.assert_array_equal(info, 0)
    off = x[:, outside(n, "diag")]
    assert np.all(off == 0) and not np.any(np.signbit(off.real))
    got = x[:, idx, idx]
    if dt.kind == "f":  # one correctly rounded division: exactly NumPy's
        np.testing.assert_array_equal(got, 1 / d)
    else:  # Smith's reciprocal: within a few eps of NumPy's complex division
        assert np.all(np.abs(got - 1 / d) <= 4 * eps(dt) * np.abs(1 / d))
    # The CPU engine: the same zeros, the same (real: identical) diagonal.
    cpu = np.asarray(gpuinv.inv_ex(a, assume_a="diagonal", device="cpu").inverse)
    if dt.kind == "f":
        np.testing.assert_array_equal(cpu, x)
    else:
        np.testing.assert_array_equal(cpu[:, outside(n, "diag")], off)
    # Only the diagonal is read.
    junk, junk_info = host_tri_invert(lib, with_garbage(rng, a, "diag"), "diag")
    np.testing.assert_array_equal(junk_info, 0)
    np.testing.assert_array_equal(junk, x)


@pytest.mark.parametrize("case", DIAG_CASES, ids=diag_id)
def test_diagonal_info_zero_and_nonfinite(lib, case):
    dt, n = case
    rng = np.random.default_rng(800 + 10 * n + dt.num)
    idx = np.arange(n)
    a = np.zeros((12, n, n), dtype=dt)
    a[:, idx, idx] = rng.uniform(1, 2, (12, n))
    expected = np.zeros(12, dtype=np.int32)
    for t in range(6):
        k = int(rng.integers(n))
        a[t, k, k] = 0
        if t % 2:  # a second zero after (or at) the first does not change the code
            a[t, n - 1, n - 1] = 0
        expected[t] = k + 1
    for t, value in zip(range(6, 10), (np.nan, np.inf, -np.inf, complex(1, np.nan) if dt.kind == "c" else np.nan)):
        k = int(rng.integers(n))
        a[t, k, k] = value
        expected[t] = -1
    a[10, 0, 0] = 0  # a zero before a NaN: -1 wins
    a[10, n - 1, n - 1] = np.nan
    expected[10] = -1
    x, info = host_tri_invert(lib, a, "diag")
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(x[info != 0]))
    assert not np.any(np.isnan(x[info == 0]))
    cpu = gpuinv.inv_ex(a, assume_a="diagonal", device="cpu")
    np.testing.assert_array_equal(np.asarray(cpu.info), expected)
    assert np.all(np.isnan(np.asarray(cpu.inverse)[expected != 0]))


def test_subnormal_diagonal_is_inverted(lib):
    # A subnormal float32 diagonal is not zero: it inverts (to Inf: 1 / 5e-39
    # overflows float32, as NumPy's does), info 0, as on the CPU engine.
    for op in ("tril", "triu", "diag"):
        a = np.array([[[5e-39, 0.0], [0.0, 5e-39]]], dtype=np.float32)
        x, info = host_tri_invert(lib, a, op)
        np.testing.assert_array_equal(info, [0])
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(x[0, 0, 0], np.float32(1) / np.float32(5e-39))


def test_kernel_spec_for_the_structured_kernels():
    for op, bounds, what in (("tril", kernels.TRI_MAX_N, "triangular"), ("triu", kernels.TRI_MAX_N, "triangular"),
                             ("diag", kernels.DIAG_MAX_N, "diagonal")):
        for dt, max_n in bounds.items():
            spec = kernels.kernel_spec(max_n, dt, op)
            assert spec.op == op and spec.shape == "thread" and spec.kind == f"{op}-thread"
            cxx = kernels._CXX_TYPES[dt]
            if op == "diag":
                assert spec.name_expression == f"gpuinv::inv_diag_thread<{cxx}, {max_n}, {spec.block}>"
            else:
                lower = "true" if op == "tril" else "false"
                assert spec.name_expression == f"gpuinv::inv_tri_thread<{cxx}, {max_n}, {spec.block}, {lower}>"
            assert spec.shared_bytes <= 48 * 1024
            assert spec not in (kernels.kernel_spec(max_n, dt), kernels.kernel_spec(min(max_n, 6), dt, "chol"))
            with pytest.raises(ValueError, match=f"the {what} kernel takes 1 <= n <= "):
                kernels.kernel_spec(max_n + 1, dt, op)
            with pytest.raises(ValueError, match=f"{what} kernel"):
                kernels.kernel_spec(0, dt, op)
    with pytest.raises(ValueError, match="op must be one of"):
        kernels.kernel_spec(2, np.float64, "tri")
    specs = kernels.instantiations()
    for op in ("tril", "triu", "diag"):
        assert {(s.dtype, s.n) for s in specs if s.op == op} == {
            (np.dtype(dt), n) for dt in DTYPES
            for n in range(1, (kernels.DIAG_MAX_N if op == "diag" else kernels.TRI_MAX_N)[np.dtype(dt)] + 1)
        }
    source = kernels.kernel_source()
    assert "#include" not in source.split("namespace gpuinv", 1)[1]
    assert "tri_invert_in_place" in source and "diag_invert_in_place" in source
