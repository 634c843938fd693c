"""The public API against NumPy and SciPy, slice by slice (issue 2)."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest

import gpuinv
from conftest import well_conditioned

DTYPES = ["float32", "float64", "complex64", "complex128"]
BATCHES = [(), (0,), (3,), (2, 5), (7, 1, 3)]


def tolerance(dtype, n):
    # Well-conditioned inputs (cond ~ a few): a few hundred ulps covers LAPACK
    # and the closed forms alike, in the dtype computed.
    return 64 * max(n, 4) * np.finfo(np.dtype(dtype)).eps


def reference(a, fn):
    """Invert slice by slice in float64/complex128, the way a user would check."""
    flat = a.reshape((-1,) + a.shape[-2:]).astype(np.result_type(a.dtype, np.float64))
    out = np.array([fn(m) for m in flat]).reshape(a.shape) if len(flat) else np.empty(a.shape)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", range(1, 65))
@pytest.mark.parametrize("batch", BATCHES, ids=str)
def test_matches_numpy_and_scipy(rng, dtype, n, batch):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a = well_conditioned(rng, batch, n, dtype)
    before = a.copy()
    x = gpuinv.inv(a, device="cpu")
    assert type(x) is np.ndarray
    assert x.shape == a.shape
    assert x.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, before)  # never modified
    if x.size == 0:
        return
    tol = tolerance(dtype, n)
    for fn in (np.linalg.inv, scipy_linalg.inv):
        ref = reference(a, fn)
        scale = np.abs(ref).max()
        assert np.abs(x - ref).max() <= tol * scale, fn


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
def test_inv_ex_matches_inv(rng, dtype, n):
    a = well_conditioned(rng, (4, 3), n, dtype)
    res = gpuinv.inv_ex(a, device="cpu")
    assert isinstance(res, gpuinv.InvResult)
    assert res.info.shape == (4, 3) and res.info.dtype == np.int32
    assert not res.info.any()
    np.testing.assert_array_equal(res.inverse, gpuinv.inv(a, device="cpu"))


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [
        ("bool", "float64"),
        ("int8", "float64"),
        ("uint8", "float64"),
        ("int32", "float64"),
        ("int64", "float64"),
        ("uint64", "float64"),
        ("float16", "float32"),
        ("float32", "float32"),
        ("float64", "float64"),
        ("complex64", "complex64"),
        ("complex128", "complex128"),
        (">f8", "float64"),
        (">c8", "complex64"),
        ("<f4", "float32"),
    ],
)
def test_dtype_rules(in_dtype, out_dtype):
    a = np.array([[[2, 1], [1, 1]], [[1, 0], [0, 1]]]).astype(in_dtype)
    if np.dtype(in_dtype) == np.bool_:
        a = np.array([[[1, 1], [0, 1]], [[1, 0], [0, 1]]], dtype=bool)
    x = gpuinv.inv(a, device="cpu")
    assert x.dtype == np.dtype(out_dtype)
    assert x.dtype.isnative
    ref = np.linalg.inv(a.astype(np.complex128 if x.dtype.kind == "c" else np.float64))
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "value, what",
    [
        (np.empty((2, 2), dtype=object), "object"),
        (np.array([["a", "b"], ["c", "d"]]), "string"),
        (np.array([[b"a", b"b"], [b"c", b"d"]]), "bytes"),
        (np.zeros((2, 2), dtype="datetime64[s]"), "datetime"),
        (np.zeros((2, 2), dtype="timedelta64[s]"), "timedelta"),
        (np.zeros((2, 2), dtype=[("x", "f8")]), "structured"),
        (np.zeros((2, 2), dtype=np.longdouble), "long double"),
    ],
)
def test_unsupported_dtypes_raise_type_error(value, what):
    if value.dtype == np.longdouble and np.dtype(np.longdouble) == np.float64:
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(TypeError, match="unsupported in gpuinv.inv") as exc:
        gpuinv.inv(value, device="cpu")
    assert what in str(exc.value)


@pytest.mark.parametrize("shape, ndim", [((), 0), ((3,), 1)])
def test_too_few_dimensions(shape, ndim):
    with pytest.raises(np.linalg.LinAlgError, match=f"^{ndim}-dimensional array given. Array must be at least two-dimensional$"):
        gpuinv.inv(np.ones(shape))
    with pytest.raises(np.linalg.LinAlgError, match="at least two-dimensional"):
        gpuinv.inv_ex(np.ones(shape))


@pytest.mark.parametrize("shape", [(2, 3), (4, 3, 2), (1, 0)])
def test_not_square(shape):
    with pytest.raises(np.linalg.LinAlgError, match="^Last 2 dimensions of the array must be square$"):
        gpuinv.inv(np.ones(shape))


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32", "complex128"])
@pytest.mark.parametrize("shape", [(0, 3, 3), (2, 0, 4, 4), (0, 0), (5, 0, 0), (2, 3, 0, 0)])
def test_empty_results_have_shape_and_dtype(shape, dtype):
    a = np.zeros(shape, dtype=dtype)
    x = gpuinv.inv(a)
    res = gpuinv.inv_ex(a)
    expected = gpuinv._dtypes.result_dtype(np.dtype(dtype))
    for out in (x, res.inverse):
        assert out.shape == shape and out.dtype == expected
    assert res.info.shape == shape[:-2] and res.info.dtype == np.int32
    assert not res.info.any()


def test_lists_and_tuples_are_numpy():
    x = gpuinv.inv([[4, 7], [2, 6]])
    assert isinstance(x, np.ndarray) and x.dtype == np.float64
    np.testing.assert_allclose(x, [[0.6, -0.7], [-0.2, 0.4]])
    y = gpuinv.inv(((1.0, 0.0), (0.0, 2.0)))
    np.testing.assert_allclose(y, [[1.0, 0.0], [0.0, 0.5]])


@pytest.mark.parametrize("n", [2, 3, 6])
def test_layouts(rng, n):
    base = well_conditioned(rng, (6, 5), n, "float64")
    ref = np.linalg.inv(base)
    fortran = np.asfortranarray(base)
    np.testing.assert_allclose(gpuinv.inv(fortran), ref, rtol=1e-12, atol=1e-12)
    flipped = base[::-1, ::-2]
    np.testing.assert_allclose(gpuinv.inv(flipped), ref[::-1, ::-2], rtol=1e-12, atol=1e-12)
    transposed = base.swapaxes(-1, -2)
    np.testing.assert_allclose(gpuinv.inv(transposed), ref.swapaxes(-1, -2), rtol=1e-12, atol=1e-12)
    broadcast = np.broadcast_to(base[0, 0], (1000, 3, n, n))
    x = gpuinv.inv(broadcast)
    assert x.shape == (1000, 3, n, n) and x.flags.writeable
    np.testing.assert_allclose(x, np.broadcast_to(ref[0, 0], x.shape), rtol=1e-12, atol=1e-12)


def singular_batch():
    a = np.tile(np.eye(3), (12, 1, 1))
    a[1] = [[1, 2, 3], [2, 4, 6], [0, 0, 1]]  # rows 0 and 1 dependent: step 2
    a[4] = 0.0  # zero matrix: step 1
    a[7, 0, 0] = np.nan
    a[9, 2, 1] = np.inf
    a[10] = [[1, 0, 0], [0, 1, 0], [0, 0, 0]]  # step 3
    return a


def test_info_codes():
    res = gpuinv.inv_ex(singular_batch(), device="cpu")
    expected = np.zeros(12, dtype=np.int32)
    expected[[1, 4, 10]] = [2, 1, 3]
    expected[[7, 9]] = -1
    np.testing.assert_array_equal(res.info, expected)
    assert np.isnan(res.inverse[[7, 9]]).all()
    ok = expected == 0
    np.testing.assert_allclose(res.inverse[ok], np.tile(np.eye(3), (ok.sum(), 1, 1)))


def test_raise_policy_names_indices():
    with pytest.raises(gpuinv.SingularMatrixError) as exc:
        gpuinv.inv(singular_batch().reshape(3, 4, 3, 3), device="cpu")
    err = exc.value
    assert isinstance(err, np.linalg.LinAlgError)
    assert err.indices == [(0, 1), (1, 0), (1, 3), (2, 1), (2, 2)]
    assert err.info.shape == (3, 4)
    message = str(err)
    assert message.startswith("5 of 12 matrices could not be inverted")
    assert "3 singular at batch indices [(0, 1), (1, 0), (2, 2)]" in message
    assert "2 non-finite (NaN or Inf) at batch indices [(1, 3), (2, 1)]" in message


def test_raise_message_lists_first_ten():
    a = np.zeros((25, 2, 2))
    a[::2] = np.eye(2)  # 13 good, 12 singular at the odd indices
    with pytest.raises(gpuinv.SingularMatrixError) as exc:
        gpuinv.inv(a)
    message = str(exc.value)
    assert "12 of 25 matrices could not be inverted: 12 singular at batch indices" in message
    assert "[1, 3, 5, 7, 9, 11, 13, 15, 17, 19, ... (2 more)]" in message
    assert len(exc.value.indices) == 12


def test_single_matrix_messages():
    with pytest.raises(gpuinv.SingularMatrixError, match=r"^Singular matrix \(zero pivot at step 2\)$"):
        gpuinv.inv([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(gpuinv.SingularMatrixError, match="NaN or Inf"):
        gpuinv.inv([[1.0, np.nan], [2.0, 4.0]])


def test_nan_policy_touches_only_failed():
    a = singular_batch()
    x = gpuinv.inv(a, on_singular="nan", device="cpu")
    failed = np.array([1, 4, 7, 9, 10])
    assert np.isnan(x[failed]).all()
    good = np.setdiff1d(np.arange(12), failed)
    np.testing.assert_allclose(x[good], np.tile(np.eye(3), (len(good), 1, 1)))


def test_ignore_policy_returns_result():
    a = singular_batch()
    x = gpuinv.inv(a, on_singular="ignore", device="cpu")
    assert x.shape == a.shape
    np.testing.assert_allclose(x[0], np.eye(3))


def test_bad_policy():
    with pytest.raises(ValueError, match="on_singular must be one of 'raise', 'nan' or 'ignore', got 'skip'"):
        gpuinv.inv(np.eye(2), on_singular="skip")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "", "CPU0"])
def test_bad_device_strings(device):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a device index"):
        gpuinv.inv(np.eye(2), device=device)


@pytest.mark.parametrize("device, exc", [(-1, ValueError), (True, TypeError), (1.5, TypeError), (None, TypeError)])
def test_bad_device_values(device, exc):
    with pytest.raises(exc, match="device"):
        gpuinv.inv(np.eye(2), device=device)


def test_cuda_without_cupy_names_the_cause(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)
    for device in ("cuda", "cuda:0", 0):
        with pytest.raises(gpuinv.CudaUnavailableError, match="CuPy is not installed"):
            gpuinv.inv(np.eye(2), device=device)
    # auto falls back to the CPU quietly, even for a stack above the crossover
    a = np.broadcast_to(np.eye(2), (gpuinv.config.cuda_min_bytes // 32 + 1, 2, 2))
    assert gpuinv.inv(a).shape == a.shape


def test_singular_error_pickles():
    with pytest.raises(gpuinv.SingularMatrixError) as exc:
        gpuinv.inv(np.zeros((3, 2, 2)))
    clone = pickle.loads(pickle.dumps(exc.value))
    assert str(clone) == str(exc.value)
    assert clone.indices == exc.value.indices
    np.testing.assert_array_equal(clone.info, exc.value.info)


def test_config_validation(monkeypatch):
    with pytest.raises(AttributeError, match="no option"):
        gpuinv.config.cpu_thread = 2
    with pytest.raises(ValueError, match="positive integer"):
        gpuinv.config.cpu_threads = 0
    monkeypatch.setenv("GPUINV_CPU_THREADS", "many")
    with pytest.raises(ValueError, match="GPUINV_CPU_THREADS must be an integer"):
        gpuinv._config.Config()


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_bytes", [1, 100, 1 << 20])
def test_chunk_seams_and_threads(rng, monkeypatch, threads, chunk_bytes):
    """Tiny chunks force many seams; results must not depend on them."""
    monkeypatch.setattr(gpuinv.config, "cpu_threads", threads)
    monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", chunk_bytes)
    for n in (2, 3, 5, 12):
        a = well_conditioned(rng, (4, 9), n, "float64")
        a[1, 3] = 0.0
        a[2, 8, 0, 0] = np.nan
        res = gpuinv.inv_ex(a, device="cpu")
        expected = np.zeros((4, 9), dtype=np.int32)
        expected[1, 3], expected[2, 8] = 1, -1
        np.testing.assert_array_equal(res.info, expected)
        ok = expected == 0
        np.testing.assert_allclose(res.inverse[ok], np.linalg.inv(a[ok]), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# NumPy's own TestInv (numpy/linalg/tests/test_linalg.py and
# numpy/matrixlib/tests/test_matrix_linalg.py), rewritten against gpuinv:
# the same inputs and the same checks, a @ inv(a) close to the identity and
# the result of the input's class (numpy.linalg.inv's __array_wrap__).
# --------------------------------------------------------------------------


class ArraySubclass(np.ndarray):
    """An ndarray subclass with nothing of its own, as in NumPy's tests."""


def _numpy_inv_cases():
    """NumPy's square cases: name -> input (array, list or np.matrix)."""
    rng = np.random.default_rng(1234)
    m = [[1.0, 2.0], [3.0, 4.0]]
    c = [[1 + 2j, 2 + 3j], [3 + 4j, 4 + 5j]]
    cases = {
        "single": np.array(m, dtype=np.float32),
        "double": np.array(m, dtype=np.float64),
        "csingle": np.array(c, dtype=np.complex64),
        "cdouble": np.array(c, dtype=np.complex128),
        "0x0": np.empty((0, 0), dtype=np.float64),
        "8x8": rng.random((8, 8)),
        "1x1": rng.random((1, 1)),
        "nonarray": [[1, 2], [3, 4]],
    }
    # Generalized: stacks of the arrays above, one and two batch axes.
    for name, a in list(cases.items()):
        if isinstance(a, np.ndarray):
            cases[name + "_tile3"] = np.array([a, 2 * a, 3 * a])
            cases[name + "_tile213"] = np.array([a] * 6).reshape((3, 2) + a.shape)
    return cases


NUMPY_INV_CASES = _numpy_inv_cases()


def _strided_variants(a):
    """``a`` and copies of it under strides (1, 3, -4) on the matrix axes and
    (1, -4) on the batch axis next to them, plus zero strides on length-1
    axes, as NumPy's ``_stride_comb_iter`` builds them."""
    if not isinstance(a, np.ndarray):
        yield "nop", a
        return
    steps = [(1,)] * a.ndim
    steps[-1] = steps[-2] = (1, 3, -4)
    if a.ndim > 2:
        steps[-3] = (1, -4)
    for repeats in itertools.product(*steps):
        big = np.empty([abs(d * r) for d, r in zip(a.shape, repeats)], dtype=a.dtype)
        big.view(np.uint8).fill(0xAB)  # garbage between the strided entries
        view = big[tuple(slice(None, None, r) for r in repeats)]
        view[...] = a
        yield "stride" + "_".join(f"{r:+d}" for r in repeats), view
    if a.shape[-1] == 1:
        yield "zero-last", np.lib.stride_tricks.as_strided(a, strides=a.strides[:-1] + (0,))
    if a.shape[-2] == 1:
        yield "zero-row", np.lib.stride_tricks.as_strided(a, strides=a.strides[:-2] + (0, a.strides[-1]))


def _check_like_numpy_inv_cases(a, device):
    """NumPy's InvCases.do, for gpuinv.inv and gpuinv.inv_ex: the product
    within NumPy's assert_almost_equal bounds (6 decimals in single
    precision, 12 in double) and the class numpy.linalg.inv gives."""
    arr = np.asarray(a)
    expected_type = type(a) if isinstance(a, np.ndarray) else np.ndarray
    single = arr.dtype in (np.float32, np.complex64)
    for x in (gpuinv.inv(a, device=device), gpuinv.inv_ex(a, device=device).inverse):
        assert type(x) is expected_type, (type(x), expected_type)
        assert type(x) is type(np.linalg.inv(a))
        assert x.shape == arr.shape
        identity = np.broadcast_to(np.eye(arr.shape[-1]), arr.shape)
        np.testing.assert_allclose(np.matmul(arr, np.asarray(x)), identity, rtol=0, atol=1.5e-6 if single else 1.5e-12)


@pytest.mark.parametrize("device", ["cpu", "auto"])
@pytest.mark.parametrize("name", list(NUMPY_INV_CASES))
def test_numpy_inv_cases(name, device):
    for _, a in _strided_variants(NUMPY_INV_CASES[name]):
        _check_like_numpy_inv_cases(a, device)
        if isinstance(a, np.ndarray):
            _check_like_numpy_inv_cases(a.view(ArraySubclass), device)


NUMPY_MATRIX_CASES = {
    "0x0_matrix": lambda: np.empty((0, 0), dtype=np.float64).view(np.matrix),
    "matrix_b_only": lambda: np.array([[1.0, 2.0], [3.0, 4.0]]),
    "matrix_a_and_b": lambda: np.matrix([[1.0, 2.0], [3.0, 4.0]]),
}


@pytest.mark.parametrize("device", ["cpu", "auto"])
@pytest.mark.parametrize("name", list(NUMPY_MATRIX_CASES))
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_numpy_inv_matrix_cases(name, device):
    _check_like_numpy_inv_cases(NUMPY_MATRIX_CASES[name](), device)


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
def test_numpy_inv_types(dtype):
    x = np.array([[1, 0.5], [0.5, 1]], dtype=dtype)
    assert gpuinv.inv(x).dtype == np.dtype(dtype)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_numpy_inv_0_size(device):
    # Every kind of zero-size input keeps its subclass, with the dtype rule.
    a = np.zeros((0, 1, 1), dtype=np.int_).view(ArraySubclass)
    for res in (gpuinv.inv(a, device=device), gpuinv.inv_ex(a, device=device).inverse):
        assert res.dtype.type is np.float64
        assert res.shape == a.shape
        assert isinstance(res, ArraySubclass)
    a = np.zeros((0, 0), dtype=np.complex64).view(ArraySubclass)
    for res in (gpuinv.inv(a, device=device), gpuinv.inv_ex(a, device=device).inverse):
        assert res.dtype.type is np.complex64
        assert res.shape == a.shape
        assert isinstance(res, ArraySubclass)
    info = gpuinv.inv_ex(a, device=device).info
    assert type(info) is np.ndarray and info.shape == () and info == 0
