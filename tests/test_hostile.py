"""Hostile and odd input: every case of issue 5 gets a defined, tested answer.

Each test goes through the public API (``gpuinv.inv`` and ``gpuinv.inv_ex``)
on ``device="cpu"`` and ``device="auto"`` (which stays on the CPU for NumPy
input where no GPU is usable, and for small stacks everywhere). The table in
docs/reliability.md lists the same cases with their outcomes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import gpuinv

DEVICES = ["cpu", "auto"]

# Tolerances for well-conditioned inputs (condition number below ~100):
# a few hundred ulps of the compute dtype.
RTOL = {
    np.dtype(np.float32): 1e-4,
    np.dtype(np.complex64): 1e-4,
    np.dtype(np.float64): 1e-11,
    np.dtype(np.complex128): 1e-11,
}

NDIM_MSG = "{}-dimensional array given. Array must be at least two-dimensional"
SQUARE_MSG = "Last 2 dimensions of the array must be square"


def well_conditioned(shape, dtype=np.float64, seed=0):
    """Random diagonally dominant stack of the given shape (..., n, n)."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    a = a + 2 * n * np.eye(n)
    return a.astype(dtype)


def reference_inverse(a, dtype):
    """Per-slice loop over numpy.linalg.inv, computed in complex128/float64."""
    a = np.asarray(a)
    wide = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    out = np.empty(a.shape, dtype=wide)
    for idx in np.ndindex(a.shape[:-2]):
        out[idx] = np.linalg.inv(np.asarray(a[idx]).astype(dtype).astype(wide))
    return out


def assert_inverse_ok(a, res, dtype):
    """res is the correct inverse of a, in ``dtype``, as a fresh C array."""
    dtype = np.dtype(dtype)
    assert type(res) is np.ndarray
    assert res.dtype == dtype
    assert res.dtype.isnative
    assert res.shape == np.shape(a)
    assert res.flags.c_contiguous and res.flags.writeable
    if isinstance(a, np.ndarray):
        assert not np.shares_memory(res, a)
    ref = reference_inverse(a, dtype)
    np.testing.assert_allclose(res, ref, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(ref).max())


FLAGS = ("C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA", "WRITEABLE", "ALIGNED", "WRITEBACKIFCOPY")


def _flags(a):
    return {f: a.flags[f] for f in FLAGS}


class Snapshot:
    """Everything observable about an array that a call must leave alone."""

    def __init__(self, a):
        self.a = a
        self.values = a.copy()
        self.bytes = a.tobytes()
        self.flags = _flags(a)
        self.strides = a.strides
        self.dtype = a.dtype
        self.base_bytes = a.base.tobytes() if isinstance(a.base, np.ndarray) else None

    def check(self):
        a = self.a
        assert a.dtype == self.dtype
        assert a.strides == self.strides
        assert _flags(a) == self.flags
        assert a.tobytes() == self.bytes
        np.testing.assert_array_equal(a, self.values)
        if self.base_bytes is not None:
            assert a.base.tobytes() == self.base_bytes


def call_both(a, device, **kw):
    """Call inv and inv_ex, check they agree, return (inverse, info)."""
    snap = Snapshot(a) if isinstance(a, np.ndarray) else None
    res = gpuinv.inv_ex(a, device=device)
    if snap is not None:
        snap.check()
    x = gpuinv.inv(a, device=device, on_singular="ignore")
    if snap is not None:
        snap.check()
    np.testing.assert_array_equal(x, res.inverse)
    assert isinstance(res, gpuinv.InvResult)
    assert res.info.dtype == np.int32
    assert res.info.shape == np.shape(a)[:-2]
    return res.inverse, res.info


# --------------------------------------------------------------------------
# Regression: the closed forms scaled their input in place.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [(), (1,), (3,), (2, 1)])
def test_closed_form_never_writes_input(n, batch):
    # A power-of-two scale was applied to a structure-of-arrays view that,
    # for n = 1 or a single matrix per chunk, was the caller's own memory.
    a = well_conditioned(batch + (n, n)) * 3.0
    snap = Snapshot(a)
    gpuinv.inv(a, device="cpu")
    snap.check()


def test_closed_form_read_only_single_matrix():
    a = well_conditioned((3, 3)) * 5.0
    a.flags.writeable = False
    x = gpuinv.inv(a, device="cpu")
    assert_inverse_ok(a, x, np.float64)


# --------------------------------------------------------------------------
# Array-likes: lists, tuples, scalars, wrong dimensions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "a, dtype",
    [
        ([[4, 7], [2, 6]], np.float64),
        (((4.0, 7.0), (2.0, 6.0)), np.float64),
        ([[[1, 2], [3, 5]], [[2, 0], [0, 4]]], np.float64),
        ([[1 + 1j, 2], [3, 4j]], np.complex128),
        ([[True, False], [False, True]], np.float64),
        ([np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, 5.0], dtype=np.float32)], np.float32),
        ([[5.0]], np.float64),
    ],
)
def test_lists_and_tuples(a, dtype, device):
    x, info = call_both(a, device)
    assert_inverse_ok(a, x, dtype)
    assert (info == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "a, ndim",
    [
        (3.0, 0),
        (np.float64(3.0), 0),
        (np.array(2.0), 0),
        (None, 0),  # shape is checked before dtype, as numpy.linalg.inv does
        ("abc", 0),
        (np.ones(3), 1),
        ([1.0, 2.0], 1),
        (np.ones(0), 1),
    ],
)
def test_fewer_than_two_dimensions(a, ndim, device):
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(np.linalg.LinAlgError, match=re.escape(NDIM_MSG.format(ndim))):
            f(a, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3), (4, 3, 2), (0, 2, 3), (1, 0), (5, 1, 0, 4)])
def test_non_square(shape, device):
    a = np.ones(shape)
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(np.linalg.LinAlgError, match=f"^{re.escape(SQUARE_MSG)}$"):
            f(a, device=device)


class ArrayLike:
    """An object that only speaks NumPy's __array__ protocol (as pandas and xarray do)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_array_protocol_and_buffers(device):
    a = well_conditioned((3, 4, 4), np.float32) * 3
    snap = Snapshot(a)
    x, info = call_both(ArrayLike(a), device)
    assert_inverse_ok(a, x, np.float32)
    snap.check()  # __array__ handed over a's own memory: still untouched
    y, info = call_both(memoryview(a), device)
    np.testing.assert_array_equal(y, x)
    snap.check()


def test_ragged_list_is_numpys_value_error():
    # numpy.asarray refuses ragged nesting; its ValueError passes through.
    with pytest.raises(ValueError, match="inhomogeneous"):
        gpuinv.inv([[1.0, 2.0], [3.0]], device="cpu")


# --------------------------------------------------------------------------
# Empty stacks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 3), (2, 0, 3, 3), (0, 1, 1), (0, 0), (3, 0, 0), (0, 0, 0), (2, 3, 0, 0)])
@pytest.mark.parametrize(
    "dtype, out_dtype",
    [
        (np.float64, np.float64),
        (np.float32, np.float32),
        (np.complex64, np.complex64),
        (np.complex128, np.complex128),
        (np.float16, np.float32),
        (np.int8, np.float64),
        (np.uint64, np.float64),
        (bool, np.float64),
        (">f4", np.float32),
    ],
)
def test_empty_results(shape, dtype, out_dtype, device):
    a = np.zeros(shape, dtype=dtype)
    x, info = call_both(a, device)
    assert x.shape == shape
    assert x.dtype == np.dtype(out_dtype)
    assert info.shape == shape[:-2]
    assert (info == 0).all()
    for policy in ("raise", "nan", "ignore"):
        y = gpuinv.inv(a, device=device, on_singular=policy)
        assert y.shape == shape and y.dtype == np.dtype(out_dtype)


def test_empty_bad_dtype_still_refused():
    with pytest.raises(TypeError, match="object"):
        gpuinv.inv(np.zeros((0, 2, 2), dtype=object), device="cpu")


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------

NUMBERS_MSG = "the input must hold numbers (bool, integer, float or complex)"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "a, what",
    [
        (np.array([[1, 2], [3, 4]], dtype=object), "object"),
        (np.array([["a", "b"], ["c", "d"]]), "string"),
        (np.array([[b"a", b"b"], [b"c", b"d"]]), "bytes"),
        (np.zeros((2, 2), dtype="M8[s]"), "datetime"),
        (np.zeros((3, 2, 2), dtype="m8[ns]"), "timedelta"),
        (np.zeros((2, 2), dtype=[("re", "f8"), ("im", "f8")]), "structured or void"),
        (np.zeros((2, 2), dtype="V8"), "structured or void"),
    ],
)
def test_unsupported_dtypes(a, what, device):
    snap = Snapshot(a)
    expected = f"array type {a.dtype} ({what}) is unsupported in gpuinv.inv: {NUMBERS_MSG}"
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
            f(a, device=device)
    snap.check()


@pytest.mark.skipif(
    np.dtype(np.longdouble).itemsize == 8, reason="long double is float64 on this platform"
)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_long_double_refused(dtype, device):
    a = np.eye(3, dtype=dtype)
    expected = (
        f"array type {np.dtype(dtype)} is unsupported in gpuinv.inv: use float32, float64, "
        "complex64 or complex128 (long double types are not supported)"
    )
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
            f(a, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, out_dtype",
    [
        (np.float16, np.float32),
        (np.int8, np.float64),
        (np.uint8, np.float64),
        (np.int16, np.float64),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.uint32, np.float64),
        (np.uint64, np.float64),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.complex64, np.complex64),
        (np.complex128, np.complex128),
    ],
)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
def test_numeric_dtypes(dtype, out_dtype, n, device):
    a = well_conditioned((4, n, n), np.float64, seed=n)
    if np.dtype(dtype).kind in "iu":
        a = np.round(a * 10).astype(dtype) if np.dtype(dtype).kind == "i" else np.round(np.abs(a) * 10).astype(dtype)
    else:
        a = a.astype(dtype)
    x, info = call_both(a, device)
    # The conversion happens first: the reference inverts a.astype(out_dtype).
    nonsingular = info == 0
    assert x.dtype == np.dtype(out_dtype)
    ref = reference_inverse(a[nonsingular], out_dtype)
    tol = RTOL[np.dtype(out_dtype)] * 100  # integer matrices are less well conditioned
    np.testing.assert_allclose(x[nonsingular], ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("device", DEVICES)
def test_integer_extremes(device):
    # uint64 values past 2**63 and int8's -128 convert to float64 exactly
    # (or to the nearest float64) before inverting.
    a = np.array([[[2**63, 0], [0, 1]], [[2**64 - 1, 1], [0, 3]]], dtype=np.uint64)
    x, info = call_both(a, device)
    assert (info == 0).all()
    assert_inverse_ok(a, x, np.float64)
    assert x[0, 0, 0] == 2.0**-63
    b = np.array([[-128, 127], [0, -1]], dtype=np.int8)
    y, info = call_both(b, device)
    assert info == 0
    # Exact equality is safe here: the pivot -128 is a power of two and every
    # other step of any elimination or closed form is exact, whatever the
    # order of the updates.
    np.testing.assert_array_equal(y, np.linalg.inv(b.astype(np.float64)))


@pytest.mark.parametrize("device", DEVICES)
def test_bool_singular_and_regular(device):
    a = np.array([[[True, False], [False, True]], [[True, True], [True, True]]])
    x, info = call_both(a, device)
    assert x.dtype == np.float64
    np.testing.assert_array_equal(info, [0, 2])
    np.testing.assert_array_equal(x[0], np.eye(2))


@pytest.mark.parametrize("device", DEVICES)
def test_float16_computes_in_float32(device):
    a = well_conditioned((5, 3, 3), np.float16)
    x, _ = call_both(a, device)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, np.linalg.inv(a.astype(np.float32)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, out_dtype",
    [(">f8", "<f8"), (">f4", "<f4"), (">c16", "<c16"), (">c8", "<c8"), (">f2", "<f4"), (">i4", "<f8"), (">u8", "<f8")],
)
@pytest.mark.parametrize("n", [2, 3, 6])
def test_non_native_byte_order(dtype, out_dtype, n, device):
    if np.little_endian is False:  # pragma: no cover - big-endian hosts
        dtype = dtype.replace(">", "<")
        out_dtype = out_dtype.replace("<", ">")
    base = well_conditioned((3, n, n), np.complex128 if "c" in dtype else np.float64, seed=n)
    if "i" in dtype or "u" in dtype:
        base = np.round(np.abs(base.real) * 10)
    a = base.astype(dtype)
    assert not a.dtype.isnative
    x, info = call_both(a, device)
    assert (info == 0).all()
    assert x.dtype == np.dtype(out_dtype) and x.dtype.isnative
    ref = reference_inverse(a, x.dtype)
    tol = RTOL[x.dtype] * 100
    np.testing.assert_allclose(x, ref, rtol=tol, atol=tol * np.abs(ref).max())


# --------------------------------------------------------------------------
# Read-only, memory-mapped, subclasses (numpy.linalg.inv's wrap), masked
# --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_read_only(n, device):
    a = well_conditioned((6, n, n)) * 3.0  # not in [0.5, 1): the closed forms must scale a copy
    a.flags.writeable = False
    x, _ = call_both(a, device)
    assert_inverse_ok(a, x, np.float64)
    assert not a.flags.writeable


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["r", "c", "r+"])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_memmap(tmp_path, mode, n, device):
    path = tmp_path / "stack.f8"
    data = well_conditioned((7, n, n)) * 3.0
    data.tofile(path)
    before = path.read_bytes()
    m = np.memmap(path, dtype=np.float64, mode=mode, shape=data.shape)
    x, info = call_both(m, device)
    # As numpy.linalg.inv: np.memmap's __array_wrap__ gives a plain array,
    # not a memmap of some file.
    assert type(x) is np.ndarray
    assert type(np.linalg.inv(m)) is np.ndarray
    assert (info == 0).all()
    assert_inverse_ok(data, x, np.float64)
    m.flush()
    del m
    assert path.read_bytes() == before


class Stack(np.memmap):
    """A memmap subclass: its wrap keeps the class, with no file behind it."""


@pytest.mark.parametrize("device", DEVICES)
def test_memmap_subclass(tmp_path, device):
    path = tmp_path / "stack.f8"
    data = well_conditioned((3, 4, 4)) * 3.0
    data.tofile(path)
    before = path.read_bytes()
    m = np.memmap(path, dtype=np.float64, mode="r+", shape=data.shape).view(Stack)
    x, info = call_both(m, device)
    expected = np.linalg.inv(m)
    assert type(x) is type(expected) is Stack
    assert x.filename is None and expected.filename is None  # not the input's file
    assert (info == 0).all() and type(info) is np.ndarray
    np.testing.assert_allclose(x, expected, rtol=RTOL[x.dtype], atol=RTOL[x.dtype])
    x[...] = 0.0  # the result is ours to write, and the file stays as it was
    m.flush()
    del m
    assert path.read_bytes() == before


class Tagged(np.ndarray):
    """A custom ndarray subclass with an attribute, as pipelines make them."""

    def __new__(cls, a, tag="t"):
        obj = np.asarray(a).view(cls)
        obj.tag = tag
        return obj

    def __array_finalize__(self, obj):
        self.tag = getattr(obj, "tag", None)


class Recording(np.ndarray):
    """Counts the calls of its ``__array_wrap__``."""

    calls: list = []

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        Recording.calls.append(arr.shape)
        return super().__array_wrap__(arr, context, return_scalar)


@pytest.mark.parametrize("device", DEVICES)
def test_ndarray_subclass_keeps_its_class(device):
    # As numpy.linalg.inv: the inverse goes through the input's
    # __array_wrap__, so it is the subclass (with what __array_finalize__
    # carries over); info is a plain ndarray.
    a = Tagged(well_conditioned((3, 4, 4)))
    x, info = call_both(a, device)
    expected = np.linalg.inv(a)
    assert type(x) is type(expected) is Tagged
    assert x.tag == expected.tag == "t"
    assert type(info) is np.ndarray
    assert_inverse_ok(np.asarray(a), np.asarray(x), np.float64)
    assert a.tag == "t"
    for policy in ("raise", "nan", "ignore"):
        assert type(gpuinv.inv(a, device=device, on_singular=policy)) is Tagged


@pytest.mark.parametrize("device", DEVICES)
def test_ndarray_subclass_wrap_called_once_per_result(device):
    a = well_conditioned((2, 3, 3)).view(Recording)
    Recording.calls.clear()
    np.linalg.inv(a)
    numpy_calls = list(Recording.calls)
    Recording.calls.clear()
    x = gpuinv.inv(a, device=device)
    assert type(x) is Recording
    assert Recording.calls == numpy_calls == [(2, 3, 3)]
    Recording.calls.clear()
    res = gpuinv.inv_ex(a, device=device)
    assert type(res.inverse) is Recording and type(res.info) is np.ndarray
    assert Recording.calls == [(2, 3, 3)]


@pytest.mark.parametrize("device", DEVICES)
def test_ndarray_subclass_with_failures(device):
    # The policies act before the wrap: NaN in exactly the failed inverses,
    # and the error (not a subclass) for "raise".
    a = well_conditioned((4, 3, 3))
    a[2] = 0.0
    a = Tagged(a)
    res = gpuinv.inv_ex(a, device=device)
    assert type(res.inverse) is Tagged and type(res.info) is np.ndarray
    np.testing.assert_array_equal(res.info, [0, 0, 1, 0])
    y = gpuinv.inv(a, device=device, on_singular="nan")
    assert type(y) is Tagged and np.isnan(y[2]).all() and np.isfinite(y[[0, 1, 3]]).all()
    with pytest.raises(gpuinv.SingularMatrixError) as e:
        gpuinv.inv(a, device=device)
    assert e.value.indices == [(2,)] and type(e.value.info) is np.ndarray


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix(device):
    # np.matrix is 2-D only: one matrix in, an np.matrix out, as
    # numpy.linalg.inv gives (so * is the matrix product on the result).
    m = np.matrix([[4.0, 7.0], [2.0, 6.0]])
    x, info = call_both(m, device)
    assert type(x) is np.matrix and x.shape == (2, 2)
    np.testing.assert_allclose(x, np.linalg.inv(m), rtol=1e-14)
    np.testing.assert_allclose(x * m, np.eye(2), atol=1e-14)
    assert type(info) is np.ndarray and info.shape == () and info == 0
    assert type(m.I) is type(x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [False, [[False, True], [False, False]]])
def test_masked_arrays_refused(mask, device):
    # Deliberate: the mask would be silently ignored by any inverse, so a
    # masked array is refused even when nothing is masked.
    a = np.ma.array([[4.0, 7.0], [2.0, 6.0]], mask=mask)
    expected = (
        "masked arrays are not supported by gpuinv.inv: the mask would be "
        "silently ignored; pass a.filled(value) or a.data explicitly"
    )
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
            f(a, device=device)
    x = gpuinv.inv(a.filled(0.0), device=device)
    assert type(x) is np.ndarray


# --------------------------------------------------------------------------
# Views: Fortran order, negative strides, broadcast, overlapping
# --------------------------------------------------------------------------


def _views(n, dtype):
    base = well_conditioned((6, 5, n, n), dtype, seed=n)
    flat = well_conditioned((1, 64, 64), dtype, seed=100 + n).ravel()
    item = flat.itemsize
    return {
        "fortran": np.asfortranarray(base),
        "transposed": base.transpose(1, 0, 3, 2),
        "negative": base[::-1, ::-2, ::-1, ::-1],
        "negative-inner": base[..., ::-1, :],
        "strided": well_conditioned((4, 2 * n, 2 * n), dtype)[:, ::2, ::2] + 0 * np.eye(n, dtype=dtype),
        "broadcast-batch": np.broadcast_to(base[0, 0], (3, 4, n, n)),
        "broadcast-axis": np.broadcast_to(base[:, :1], (6, 5, n, n)),
        # Every matrix starts one element after the previous one: they share memory.
        "overlapping": np.lib.stride_tricks.as_strided(
            flat, shape=(40, n, n), strides=(item, 64 * item, item), writeable=False
        ),
        # Zero-stride inside the batch and a transposed matrix layout.
        "overlapping-transposed": np.lib.stride_tricks.as_strided(
            flat, shape=(10, 3, n, n), strides=(2 * item, 0, item, 64 * item), writeable=False
        ),
    }


VIEW_NAMES = list(_views(2, np.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", VIEW_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("chunk_bytes", [None, 64])
def test_views(kind, dtype, n, chunk_bytes, device, monkeypatch):
    if chunk_bytes is not None:  # many chunks, on the thread pool
        monkeypatch.setattr(gpuinv.config, "cpu_chunk_bytes", chunk_bytes)
    a = _views(n, dtype)[kind]
    x, info = call_both(a, device)
    # Overlapping windows of random data can be badly conditioned; compare
    # only the well-conditioned ones tightly.
    ref = reference_inverse(a, dtype)
    cond = np.linalg.cond(np.asarray(a).astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64))
    good = cond < 1e3
    assert good.sum() >= good.size // 2
    assert (info[good] == 0).all()
    tol = RTOL[np.dtype(dtype)] * 10
    scale = np.abs(ref[good]).max(axis=(-1, -2), keepdims=True)
    assert np.all(np.abs(x[good] - ref[good]) <= tol * scale)
    assert x.flags.c_contiguous


@pytest.mark.parametrize("device", DEVICES)
def test_zero_stride_inside_a_matrix(device):
    # Every row is the same memory: singular, with LAPACK's step.
    row = np.array([1.0, 2.0, 3.0])
    a = np.lib.stride_tricks.as_strided(row, shape=(3, 3), strides=(0, 8), writeable=False)
    _, info = call_both(a, device)
    assert info == 2
    with pytest.raises(gpuinv.SingularMatrixError, match=r"^Singular matrix \(zero pivot at step 2\)$"):
        gpuinv.inv(a, device=device)


# --------------------------------------------------------------------------
# Error messages of the policies and arguments
# --------------------------------------------------------------------------


def test_policy_argument_message():
    a = np.eye(2)
    with pytest.raises(
        ValueError, match=re.escape("on_singular must be one of 'raise', 'nan' or 'ignore', got 'warn'")
    ):
        gpuinv.inv(a, on_singular="warn")


@pytest.mark.parametrize(
    "device, exc, msg",
    [
        ("gpu", ValueError, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a device index, got 'gpu'"),
        ("cuda:x", ValueError, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a device index, got 'cuda:x'"),
        (-1, ValueError, "device index must be non-negative, got -1"),
        (True, TypeError, "device must be a string or an int, got bool"),
        (1.5, TypeError, "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or an int, got float"),
    ],
)
def test_device_argument_messages(device, exc, msg):
    for f in (gpuinv.inv, gpuinv.inv_ex):
        with pytest.raises(exc, match=f"^{re.escape(msg)}$"):
            f(np.eye(2), device=device)


def test_single_matrix_messages():
    with pytest.raises(gpuinv.SingularMatrixError, match=r"^Singular matrix \(zero pivot at step 2\)$"):
        gpuinv.inv([[1.0, 2.0], [2.0, 4.0]], device="cpu")
    with pytest.raises(gpuinv.SingularMatrixError, match="^Matrix holds NaN or Inf and cannot be inverted$"):
        gpuinv.inv([[1.0, np.nan], [2.0, 4.0]], device="cpu")


def test_batch_message_lists_first_ten():
    a = np.tile(np.eye(2), (30, 1, 1))
    a[3:25, 1, 1] = 0  # 22 singular at step 2
    a[27, 0, 0] = np.inf
    with pytest.raises(gpuinv.SingularMatrixError) as e:
        gpuinv.inv(a, device="cpu")
    listed = ", ".join(str(i) for i in range(3, 13))
    assert str(e.value) == (
        f"23 of 30 matrices could not be inverted: 22 singular at batch indices [{listed}, ... (12 more)]; "
        "1 non-finite (NaN or Inf) at batch indices [27]"
    )
    assert e.value.indices == [(i,) for i in range(3, 25)] + [(27,)]
    assert isinstance(e.value, np.linalg.LinAlgError)


def test_batch_message_multi_axis():
    a = np.tile(np.eye(3), (2, 3, 1, 1))
    a[1, 2] = 0
    with pytest.raises(gpuinv.SingularMatrixError) as e:
        gpuinv.inv(a, device="cpu")
    assert str(e.value) == "1 of 6 matrices could not be inverted: 1 singular at batch indices [(1, 2)]"
    assert e.value.indices == [(1, 2)]
    np.testing.assert_array_equal(a[e.value.indices[0]], np.zeros((3, 3)))


def test_nan_inputs_through_lists():
    res = gpuinv.inv_ex([[[np.nan, 1.0], [1.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]], device="cpu")
    np.testing.assert_array_equal(res.info, [-1, 0])
    assert np.isnan(res.inverse[0]).all()
    np.testing.assert_array_equal(res.inverse[1], np.eye(2) / 2)
