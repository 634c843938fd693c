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
