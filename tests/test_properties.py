"""Property tests (hypothesis): random stacks against a per-slice loop over numpy.linalg.inv.

Each example draws a batch shape (any number of axes, empty ones included),
an order n, an input dtype, a memory layout (C, Fortran, reversed, padded,
transposed storage, broadcast), per-matrix power-of-two scales, a chunk size
(to run the thread pool with many chunks), and failures planted at random
batch positions: NaN, +-Inf, zero matrices and zero columns. It then checks,
matrix by matrix:

* ``info``: -1 for the non-finite ones, ``c + 1`` for a zero column c, 0 for
  the rest;
* the inverse of every other matrix against ``numpy.linalg.inv`` of the same
  slice (in the compute dtype), with a tolerance of a few eps times its
  condition number;
* the three ``on_singular`` policies: ``"raise"`` (message, ``.indices``,
  ``.info``), ``"nan"`` (exactly the failed matrices) and ``"ignore"``;
* that the input is unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gpuinv

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st

INPUT_DTYPES = ["float32", "float64", "complex64", "complex128", "float16", "int8", "uint64", "bool", ">f8", ">c8"]
LAYOUTS = ["C", "F", "reversed", "padded", "transposed", "broadcast"]
# Deterministic (derandomize) and bounded: about 2 s on 2 cores for both tests.
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


def compute_dtype(name):
    d = np.dtype(name)
    if d.kind in "biu":
        return np.dtype(np.float64)
    if d.newbyteorder("=") == np.float16:
        return np.dtype(np.float32)
    return d.newbyteorder("=")


def wide(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


@st.composite
def cases(draw):
    batch = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    n = draw(st.one_of(st.integers(0, 6), st.sampled_from([7, 9, 12])))
    dtype = draw(st.sampled_from(INPUT_DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**32 - 1))
    dominance = draw(st.sampled_from([0.0, 1.0, 2.0]))
    scaled = draw(st.booleans())
    failures = draw(st.integers(0, 4))
    chunk_bytes = draw(st.sampled_from([None, 48, 1000]))
    device = draw(st.sampled_from(["cpu", "auto"]))
    return dict(
        batch=batch, n=n, dtype=dtype, layout=layout, seed=seed, dominance=dominance,
        scaled=scaled, failures=failures, chunk_bytes=chunk_bytes, device=device,
    )


def build(case):
    """Return (array as the caller passes it, expected info)."""
    rng = np.random.default_rng(case["seed"])
    batch, n, name = case["batch"], case["n"], case["dtype"]
    d = np.dtype(name)
    layout = case["layout"]
    # Broadcast: generate one axis at size 1 and broadcast it at the end.
    axis = None
    base_batch = batch
    if layout == "broadcast" and batch:
        axis = int(rng.integers(len(batch)))
        base_batch = batch[:axis] + (1,) + batch[axis + 1 :]
    shape = base_batch + (n, n)
    count = math.prod(base_batch)

    if d.kind == "b":
        # Unit upper triangular with random ones: never singular.
        a = np.triu(rng.random(shape) < 0.3, 1) | np.eye(n, dtype=bool)
        a = np.asarray(a)
    elif d.kind in "iu":
        lo = 0 if d.kind == "u" else -3
        a = rng.integers(lo, 4, shape) + (4 * n + 1) * np.eye(n, dtype=np.int64)
    else:
        a = rng.standard_normal(shape)
        if d.kind == "c":
            a = a + 1j * rng.standard_normal(shape)
        a = a + case["dominance"] * n * np.eye(n)
        if case["scaled"] and d.itemsize > 2 and count:
            # Powers of two that keep entries and inverses normal numbers.
            limit = 60 if np.finfo(compute_dtype(name)).eps > 1e-10 else 500
            k = rng.integers(-limit, limit + 1, base_batch)
            a = a * np.ldexp(1.0, k)[..., None, None]

    info = np.zeros(base_batch, dtype=np.int32)
    flat_a = a.reshape((count, n, n)) if n else a.reshape((count, 0, 0))
    flat_info = info.reshape(-1)
    if count and n:
        for _ in range(case["failures"]):
            p = int(rng.integers(count))
            kinds = ["nan", "inf", "-inf", "zero", "column"] if d.kind in "fc" else ["zero", "column"]
            kind = kinds[int(rng.integers(len(kinds)))]
            i, j = rng.integers(n, size=2)
            if kind in ("nan", "inf", "-inf"):
                flat_a[p, i, j] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
            elif kind == "zero":
                flat_a[p] = 0
            else:
                flat_a[p, :, j] = 0
        # Non-finite wins; otherwise the first zero column c (the generated
        # matrices have none of their own) is met at elimination step c + 1.
        finite = np.isfinite(flat_a).all(axis=(1, 2))
        zero_column = ~flat_a.any(axis=1)
        first = np.where(zero_column.any(axis=1), zero_column.argmax(axis=1) + 1, 0)
        flat_info[:] = np.where(finite, first, -1)
    logical = a.astype(d)

    if axis is not None:
        return np.broadcast_to(logical, batch + (n, n)), np.broadcast_to(info, batch)
    if layout == "F":
        view = np.asfortranarray(logical)
    elif layout == "reversed":
        view = np.flip(np.flip(logical).copy())
    elif layout == "padded":
        big = np.zeros(logical.shape[:-2] + (2 * n + 1, 3 * n), dtype=d)
        big[..., 1::2, ::3] = logical
        view = big[..., 1::2, ::3]
    elif layout == "transposed":
        view = np.swapaxes(np.ascontiguousarray(np.swapaxes(logical, -1, -2)), -1, -2)
    else:
        view = logical
    assert np.array_equal(view, logical, equal_nan=True)
    return view, info


def reference(a, dtype):
    """Per-slice numpy.linalg.inv in the compute dtype (widened), and 1-norm conditions."""
    w = wide(dtype)
    out = np.full(a.shape, np.nan, dtype=w)
    cond = np.full(a.shape[:-2], np.inf)
    for idx in np.ndindex(a.shape[:-2]):
        m = np.asarray(a[idx]).astype(dtype).astype(w)
        if not np.isfinite(m).all():
            continue
        try:
            out[idx] = np.linalg.inv(m)
        except np.linalg.LinAlgError:
            continue
        cond[idx] = np.linalg.norm(m, 1) * np.linalg.norm(out[idx], 1) if m.size else 1.0
    return out, cond


def run_case(case):
    a, expected_info = build(case)
    before = a.copy()
    before_bytes = a.tobytes()
    dtype = compute_dtype(case["dtype"])
    old_chunk = gpuinv.config.cpu_chunk_bytes
    try:
        if case["chunk_bytes"] is not None:
            gpuinv.config.cpu_chunk_bytes = case["chunk_bytes"]
        res = gpuinv.inv_ex(a, device=case["device"])
        ignored = gpuinv.inv(a, device=case["device"], on_singular="ignore")
        nan_filled = gpuinv.inv(a, device=case["device"], on_singular="nan")
        try:
            raised = None
            plain = gpuinv.inv(a, device=case["device"])
        except gpuinv.SingularMatrixError as exc:
            raised = exc
    finally:
        gpuinv.config.cpu_chunk_bytes = old_chunk

    # The input is untouched.
    assert a.tobytes() == before_bytes
    np.testing.assert_array_equal(a, before)

    # Shapes, dtypes, info codes matrix by matrix.
    x, info = res
    assert x.shape == a.shape and x.dtype == dtype and x.flags.c_contiguous
    assert info.shape == a.shape[:-2] and info.dtype == np.int32
    np.testing.assert_array_equal(info, expected_info)

    # Every matrix that did not fail matches numpy.linalg.inv.
    failed = info != 0
    ok = ~failed
    ref, cond = reference(a, dtype)
    n = a.shape[-1]
    if ok.any() and n:
        eps = np.finfo(dtype).eps
        err = np.abs(x[ok] - ref[ok]).max(axis=(-1, -2)) / np.abs(ref[ok]).max(axis=(-1, -2))
        assert np.all(err <= 100 * max(n, 1) * eps * np.minimum(cond[ok], 1 / eps)), err.max()
    if failed.any():
        assert np.isnan(x[info == -1]).all()
        assert np.isnan(x[info > 0]).all()

    # The policies.
    np.testing.assert_array_equal(ignored, x)
    assert np.isnan(nan_filled[failed]).all()
    np.testing.assert_array_equal(nan_filled[ok], x[ok])
    if failed.any():
        assert raised is not None
        assert raised.indices == [tuple(int(j) for j in i) for i in np.argwhere(failed)]
        np.testing.assert_array_equal(raised.info, info)
        if info.ndim == 0:
            assert str(raised) in (
                "Matrix holds NaN or Inf and cannot be inverted",
                f"Singular matrix (zero pivot at step {int(info)})",
            )
        else:
            noun = "matrix" if info.size == 1 else "matrices"
            assert str(raised).startswith(f"{int(failed.sum())} of {info.size} {noun} could not be inverted: ")
            if (info > 0).any():
                assert f"{int((info > 0).sum())} singular at batch indices [" in str(raised)
            if (info == -1).any():
                assert f"{int((info == -1).sum())} non-finite (NaN or Inf) at batch indices [" in str(raised)
    else:
        assert raised is None
        np.testing.assert_array_equal(plain, x)


@SETTINGS
@given(cases())
def test_random_stacks_match_numpy(case):
    run_case(case)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.builds(
        dict,
        batch=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
        n=st.integers(1, 5),
        dtype=st.sampled_from(["float32", "float64", "complex64", "complex128"]),
        layout=st.sampled_from(LAYOUTS),
        seed=st.integers(0, 2**32 - 1),
        dominance=st.just(2.0),
        scaled=st.just(True),
        failures=st.integers(1, 6),
        chunk_bytes=st.sampled_from([None, 48]),
        device=st.just("cpu"),
    )
)
def test_failures_at_random_positions(case):
    # Always some failures, in batches that are never empty.
    run_case(case)
