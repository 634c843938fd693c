"""inv / inv_ex on dask arrays: lazy graphs, blockwise engines, global indices."""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv.engines.cpu import CpuEngine

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def _stack(shape, seed=0, dtype=np.float64):
    n = shape[-1]
    a = np.random.default_rng(seed).standard_normal(shape) + n * np.eye(n)
    return a.astype(dtype)


def _with_failures():
    """(12, 5, 3, 3) with failures in three different blocks of chunks (4, 3)."""
    a = _stack((12, 5, 3, 3))
    a[1, 4] = 0.0  # block (0, 1)
    a[6, 0, 2] = a[6, 0, 0]  # block (1, 0): rows equal, singular at step 3
    a[10, 2, 1, 1] = np.nan  # block (2, 0)
    return a


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = CpuEngine.inverse

    def inverse(self, request, op):
        calls.append(op.batch_shape)
        return original(self, request, op)

    monkeypatch.setattr(CpuEngine, "inverse", inverse)
    return calls


def test_inv_matches_numpy_threaded():
    a = _stack((20, 4, 4))
    d = da.from_array(a, chunks=(6, 4, 4))
    r = gpuinv.inv(d)
    assert isinstance(r, da.Array)
    assert r.dtype == np.float64 and r.shape == a.shape and r.chunks == d.chunks
    np.testing.assert_allclose(r.compute(scheduler="threads"), np.linalg.inv(a), rtol=1e-10)


def test_matrix_axes_are_merged():
    a = _stack((7, 6, 6))
    d = da.from_array(a, chunks=(3, 2, 4))
    r = gpuinv.inv(d)
    assert r.chunks == ((3, 3, 1), (6,), (6,))
    np.testing.assert_allclose(r.compute(scheduler="threads"), np.linalg.inv(a), rtol=1e-10)


def test_multi_dim_batch_inv_ex():
    a = _with_failures()
    d = da.from_array(a, chunks=(4, 3, 2, 3))
    res = gpuinv.inv_ex(d)
    assert res.info.shape == (12, 5) and res.info.dtype == np.int32
    assert res.info.chunks == ((4, 4, 4), (3, 2))
    inverse, info = dask.compute(res.inverse, res.info, scheduler="threads")
    ref = gpuinv.inv_ex(a, device="cpu")
    np.testing.assert_array_equal(info, ref.info)
    np.testing.assert_allclose(inverse, ref.inverse, rtol=1e-10, equal_nan=True)
    assert info[1, 4] == 1 and info[6, 0] == 3 and info[10, 2] == -1


def test_nothing_runs_at_graph_build_time(counted):
    d = da.from_array(_with_failures(), chunks=(4, 3, 3, 3))
    res = gpuinv.inv_ex(d)
    r = gpuinv.inv(d, on_singular="nan")
    r_raise = gpuinv.inv(d)
    assert counted == []
    assert type(res.inverse._meta) is np.ndarray and res.inverse._meta.dtype == np.float64
    assert res.info._meta.dtype == np.int32 and res.info._meta.ndim == 2
    assert r._meta.ndim == 4 and r_raise._meta.dtype == np.float64
    dask.compute(res.inverse, res.info, scheduler="sync")
    # One engine call per block computes both outputs of inv_ex.
    assert sorted(counted) == sorted([(4, 3), (4, 2)] * 3)
    del counted[:]
    r.compute(scheduler="sync")
    assert len(counted) == 6


def test_raise_names_global_indices():
    a = _with_failures()
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    seen = set()
    # Each failing block raises on its own when computed; probe them one at a time.
    for rows, cols, expected in [
        (slice(0, 4), slice(3, 5), (1, 4)),
        (slice(4, 8), slice(0, 3), (6, 0)),
        (slice(8, 12), slice(0, 3), (10, 2)),
    ]:
        with pytest.raises(gpuinv.SingularMatrixError) as err:
            gpuinv.inv(d)[rows, cols].compute(scheduler="threads")
        assert err.value.indices == [expected]
        assert str(expected) in str(err.value)
        seen.add(expected)
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(d).compute(scheduler="threads")
    assert set(err.value.indices) <= seen and err.value.indices
    # A block without failures computes fine.
    ok = gpuinv.inv(d)[:4, :3].compute(scheduler="threads")
    np.testing.assert_allclose(ok, np.linalg.inv(a[:4, :3]), rtol=1e-10)


def test_raise_one_batch_axis_message():
    a = _stack((9, 2, 2))
    a[7] = 0.0
    d = da.from_array(a, chunks=3)
    with pytest.raises(gpuinv.SingularMatrixError, match=r"batch indices \[7\].*block \[6:9\]"):
        gpuinv.inv(d).compute(scheduler="threads")


def test_nan_and_ignore_policies():
    a = _with_failures()
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    nan = gpuinv.inv(d, on_singular="nan").compute(scheduler="threads")
    ref = gpuinv.inv(a, on_singular="nan", device="cpu")
    np.testing.assert_allclose(nan, ref, rtol=1e-10, equal_nan=True)
    assert np.isnan(nan[1, 4]).all() and np.isnan(nan[6, 0]).all()
    ignore = gpuinv.inv(d, on_singular="ignore").compute(scheduler="threads")
    assert np.isfinite(ignore[0, 0]).all()


def test_dtypes_and_single_matrix():
    d = da.from_array((np.eye(3) * 4).astype(np.float16), chunks=2)
    r = gpuinv.inv(d)
    assert r.dtype == np.float32
    np.testing.assert_allclose(r.compute(), np.eye(3) / 4)
    info = gpuinv.inv_ex(d).info
    assert info.shape == () and int(info.compute()) == 0


def test_empty_batch():
    d = da.zeros((0, 3, 3), chunks=(2, 3, 3))
    res = gpuinv.inv_ex(d)
    assert res.inverse.compute().shape == (0, 3, 3)
    assert res.info.compute().shape == (0,)


def test_errors_at_graph_build_time():
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        gpuinv.inv(da.ones((4, 2, 3)))
    with pytest.raises(np.linalg.LinAlgError, match="two-dimensional"):
        gpuinv.inv(da.ones(3))
    with pytest.raises(TypeError, match="unsupported"):
        gpuinv.inv(da.from_array(np.array([["a"]])))
    with pytest.raises(ValueError, match="on_singular"):
        gpuinv.inv(da.ones((2, 2)), on_singular="skip")
    with pytest.raises(ValueError, match="device"):
        gpuinv.inv_ex(da.ones((2, 2)), device="gpu")
    x = da.ones((6, 2, 2), chunks=3)
    unknown = x[x[:, 0, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        gpuinv.inv(unknown)


def test_local_cluster_two_processes():
    distributed = pytest.importorskip("distributed")
    a = _with_failures()
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = gpuinv.inv_ex(d)
        inverse, info = client.compute([res.inverse, res.info], sync=True)
        ref = gpuinv.inv_ex(a, device="cpu")
        np.testing.assert_array_equal(info, ref.info)
        np.testing.assert_allclose(inverse, ref.inverse, rtol=1e-10, equal_nan=True)
        assert len(client.scheduler_info()["workers"]) == 2
        with pytest.raises(gpuinv.SingularMatrixError) as err:
            client.compute(gpuinv.inv(d)[4:8, :3], sync=True)
        assert err.value.indices == [(6, 0)]
        nan = client.compute(gpuinv.inv(d, on_singular="nan"), sync=True)
        np.testing.assert_allclose(
            nan, gpuinv.inv(a, on_singular="nan", device="cpu"), rtol=1e-10, equal_nan=True
        )


@pytest.mark.gpu
def test_cupy_blocks():
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("no usable CUDA device")
    a = _with_failures()
    d = da.from_array(cupy.asarray(a), chunks=(4, 3, 3, 3), asarray=False)
    res = gpuinv.inv_ex(d)
    assert isinstance(res.inverse._meta, cupy.ndarray)
    assert isinstance(res.info._meta, cupy.ndarray)
    inverse, info = dask.compute(res.inverse, res.info, scheduler="threads")
    assert isinstance(inverse, cupy.ndarray)
    ref = gpuinv.inv_ex(a, device="cpu")
    np.testing.assert_array_equal(cupy.asnumpy(info), ref.info)
    np.testing.assert_allclose(cupy.asnumpy(inverse), ref.inverse, rtol=1e-9, equal_nan=True)


# --- solve, assume_a, rcond and check_cond on dask (issue 18) -------------------


def _rhs(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.fixture
def counted_solve(monkeypatch):
    calls = []
    original = CpuEngine.solve

    def solve(self, request, op, b):
        calls.append(op.batch_shape)
        return original(self, request, op, b)

    monkeypatch.setattr(CpuEngine, "solve", solve)
    return calls


def test_solve_matches_numpy_and_keeps_a_chunks():
    a = _stack((12, 5, 3, 3))
    b = _rhs((12, 5, 3, 2))
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    x = gpuinv.solve(d, da.from_array(b, chunks=(6, 5, 3, 2)))
    assert isinstance(x, da.Array) and x.dtype == np.float64
    assert x.chunks == ((4, 4, 4), (3, 2), (3,), (2,))
    np.testing.assert_allclose(x.compute(scheduler="threads"), np.linalg.solve(a, b), rtol=1e-10)


@pytest.mark.parametrize("kind", ["vector", "vector-dask", "one-matrix", "batch-of-one", "numpy-a"])
def test_solve_b_broadcasts_against_a(kind):
    a = _stack((7, 4, 4))
    d = da.from_array(a, chunks=(3, 4, 4))
    if kind == "vector":
        b = _rhs((4,))
        want = np.linalg.solve(a, b[:, None])[..., 0]
    elif kind == "vector-dask":
        b = da.from_array(_rhs((4,)), chunks=2)
        want = np.linalg.solve(a, np.asarray(b)[:, None])[..., 0]
    elif kind == "one-matrix":
        b = _rhs((4, 3))
        want = np.linalg.solve(a, b)
    elif kind == "batch-of-one":
        b = da.from_array(_rhs((1, 4, 3)), chunks=(1, 2, 3))
        want = np.linalg.solve(a, np.asarray(b))
    else:  # a NumPy array, b a dask array: a follows b's batch chunks
        b = da.from_array(_rhs((7, 4, 2)), chunks=(2, 4, 2))
        d = a
        want = np.linalg.solve(a, np.asarray(b))
    x = gpuinv.solve(d, b)
    assert isinstance(x, da.Array) and x.shape == want.shape
    np.testing.assert_allclose(x.compute(scheduler="threads"), want, rtol=1e-10)
    res = gpuinv.solve_ex(d, b)
    assert res.info.shape == (7,)
    np.testing.assert_allclose(res.solution.compute(scheduler="threads"), want, rtol=1e-10)


def test_solve_broadcasts_a_over_b_batch():
    a = _stack((1, 3, 3))
    b = _rhs((6, 5, 3, 1))
    x = gpuinv.solve(da.from_array(a), da.from_array(b, chunks=(2, 5, 3, 1)))
    assert x.shape == (6, 5, 3, 1) and x.chunks[0] == (2, 2, 2)
    np.testing.assert_allclose(x.compute(), np.linalg.solve(a, b), rtol=1e-10)


def test_solve_ex_lazy_global_info_and_rcond(counted_solve):
    a = _with_failures()
    b = _rhs((12, 5, 3, 2))
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    res = gpuinv.solve_ex(d, b, rcond=True)
    assert counted_solve == []  # nothing runs at graph build time
    assert res.info.chunks == ((4, 4, 4), (3, 2)) and res.rcond.dtype == np.float64
    x, info, rc = dask.compute(res.solution, res.info, res.rcond, scheduler="sync")
    assert len(counted_solve) == 6  # one engine call per block for all three outputs
    ref = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    np.testing.assert_array_equal(info, ref.info)
    np.testing.assert_allclose(x, ref.solution, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(rc, ref.rcond, rtol=1e-12, equal_nan=True)
    assert info[1, 4] == 1 and info[6, 0] == 3 and info[10, 2] == -1


def test_solve_raise_names_global_indices():
    a = _with_failures()
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    b = _rhs((3,))
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.solve(d, b)[4:8, :3].compute(scheduler="threads")
    assert err.value.indices == [(6, 0)]
    assert "(6, 0)" in str(err.value) and "block [4:8, 0:3]" in str(err.value)
    nan = gpuinv.solve(d, b, on_singular="nan").compute(scheduler="threads")
    np.testing.assert_allclose(nan, gpuinv.solve(a, b, on_singular="nan", device="cpu"),
                               rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("assume_a, lower", [("pos", False), ("pos", True), ("sym", True),
                                             ("upper triangular", False), ("diagonal", False)])
def test_assume_a_and_rcond_match_the_numpy_path(assume_a, lower):
    a = _with_failures()
    a = a @ a.swapaxes(-1, -2) + 3 * np.eye(3)  # positive definite, but for the failures
    a[1, 4] = 0.0
    a[10, 2, 1, 1] = np.nan
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    res = gpuinv.inv_ex(d, assume_a=assume_a, lower=lower, rcond=True)
    assert isinstance(res.rcond, da.Array) and res.rcond.shape == (12, 5)
    inverse, info, rc = dask.compute(res.inverse, res.info, res.rcond, scheduler="threads")
    ref = gpuinv.inv_ex(a, assume_a=assume_a, lower=lower, rcond=True, device="cpu")
    np.testing.assert_array_equal(info, ref.info)
    np.testing.assert_allclose(inverse, ref.inverse, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(rc, ref.rcond, rtol=1e-12, equal_nan=True)
    got = gpuinv.inv(d, assume_a=assume_a, lower=lower, on_singular="nan").compute()
    np.testing.assert_allclose(got, gpuinv.inv(a, assume_a=assume_a, lower=lower,
                                               on_singular="nan", device="cpu"),
                               rtol=1e-10, equal_nan=True)
    b = _rhs((12, 5, 3, 2))
    sol = gpuinv.solve_ex(d, b, assume_a=assume_a, lower=lower).solution.compute()
    want = gpuinv.solve_ex(a, b, assume_a=assume_a, lower=lower, device="cpu").solution
    np.testing.assert_allclose(sol, want, rtol=1e-10, equal_nan=True)


def test_check_cond_warns_per_block_with_global_indices():
    a = _stack((12, 5, 3, 3))
    a[6, 1] = np.diag([1.0, 1.0, 1e-20])  # ill-conditioned, in the block [4:8, 0:3]
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    with pytest.warns(gpuinv.LinAlgWarning, match=r"batch indices \[\(6, 1\)\].*block \[4:8, 0:3\]") as rec:
        gpuinv.inv(d).compute(scheduler="sync")
    [w] = [w for w in rec if issubclass(w.category, gpuinv.LinAlgWarning)]
    assert w.message.indices == [(6, 1)]
    with pytest.warns(gpuinv.LinAlgWarning, match=r"\(6, 1\)"):
        gpuinv.solve(d, _rhs((3,)), check_cond=True).compute(scheduler="sync")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", gpuinv.LinAlgWarning)
        gpuinv.inv(d, check_cond=False).compute(scheduler="sync")
        gpuinv.inv(d)[:4].compute(scheduler="sync")  # blocks without the matrix: no warning


def test_solve_errors_at_graph_build_time():
    d = da.from_array(_stack((6, 3, 3)), chunks=2)
    with pytest.raises(ValueError, match="b has 4 rows but a is 3x3"):
        gpuinv.solve(d, np.ones(4))
    with pytest.raises(ValueError, match="at least one-dimensional"):
        gpuinv.solve(d, da.from_array(np.float64(1.0)))
    with pytest.raises(ValueError, match="broadcast"):
        gpuinv.solve(d, da.ones((5, 3, 2)))
    with pytest.raises(TypeError, match="unsupported"):
        gpuinv.solve(d, da.from_array(np.array([["a"] * 2] * 3)))
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        gpuinv.solve(da.ones((4, 2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="not a recognized matrix structure"):
        gpuinv.inv_ex(d, assume_a="triangular")
    with pytest.raises(TypeError, match="rcond must be True or False"):
        gpuinv.solve_ex(d, np.ones(3), rcond=1)
    x = da.ones((6, 3), chunks=3)
    unknown = x[x[:, 0] > 0]
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        gpuinv.solve(d, unknown)


def test_local_cluster_solve_structure_and_rcond():
    distributed = pytest.importorskip("distributed")
    a = _with_failures()
    b = _rhs((12, 5, 3, 2))
    d = da.from_array(a, chunks=(4, 3, 3, 3))
    spd = a @ a.swapaxes(-1, -2) + 3 * np.eye(3)
    spd[6, 0] = np.nan
    ds = da.from_array(spd, chunks=(4, 3, 3, 3))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = gpuinv.solve_ex(d, b, rcond=True)
        x, info, rc = client.compute([res.solution, res.info, res.rcond], sync=True)
        ref = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
        np.testing.assert_array_equal(info, ref.info)
        np.testing.assert_allclose(x, ref.solution, rtol=1e-10, equal_nan=True)
        np.testing.assert_allclose(rc, ref.rcond, rtol=1e-12, equal_nan=True)
        with pytest.raises(gpuinv.SingularMatrixError) as err:
            client.compute(gpuinv.solve(d, b)[4:8, :3], sync=True)
        assert err.value.indices == [(6, 0)]
        pos = gpuinv.inv_ex(ds, assume_a="pos", rcond=True)
        inverse, info, rc = client.compute([pos.inverse, pos.info, pos.rcond], sync=True)
        ref = gpuinv.inv_ex(spd, assume_a="pos", rcond=True, device="cpu")
        np.testing.assert_array_equal(info, ref.info)
        np.testing.assert_allclose(inverse, ref.inverse, rtol=1e-10, equal_nan=True)
        np.testing.assert_allclose(rc, ref.rcond, rtol=1e-12, equal_nan=True)
        with pytest.raises(gpuinv.SingularMatrixError) as err:
            client.compute(gpuinv.inv(ds, assume_a="pos")[4:8, :3], sync=True)
        assert err.value.indices == [(6, 0)]
