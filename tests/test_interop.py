"""torch tensors and JAX arrays in and out of inv / inv_ex through DLPack.

CPU tests need torch and/or JAX installed (skipped otherwise); CUDA tests
carry the ``gpu`` marker and also need a usable CuPy device.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gpuinv
from conftest import cuda_usable
from gpuinv._adapters import foreign_library, import_array


def _stack(rng, shape, dtype=np.float64):
    n = shape[-1]
    a = rng.standard_normal(shape) + n * np.eye(n)
    return a.astype(dtype)


def test_import_gpuinv_loads_no_framework():
    code = (
        "import sys, numpy as np, gpuinv; gpuinv.inv(np.eye(3)[None]); "
        "print(sorted(m for m in ('torch', 'jax', 'jaxlib', 'dask', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_foreign_library_reads_module_names_only():
    assert foreign_library(np.eye(2)) is None
    assert foreign_library([[1.0]]) is None

    class FakeTorch:
        __module__ = "torch"

        def __dlpack__(self, *args, **kwargs):  # pragma: no cover - never called
            raise AssertionError

    FakeTorch.__module__ = "torch"
    assert foreign_library(FakeTorch()) == "torch"


# ---------------------------------------------------------------- torch CPU


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    "dtype, expected",
    [
        ("float64", "float64"),
        ("float32", "float32"),
        ("complex128", "complex128"),
        ("complex64", "complex64"),
        ("float16", "float32"),
        ("bfloat16", "float32"),
        ("int32", "float64"),
    ],
)
def test_torch_cpu_dtypes(torch, dtype, expected):
    rng = np.random.default_rng(0)
    a = _stack(rng, (6, 3, 3))
    t = torch.from_numpy(a).to(getattr(torch, dtype))
    r = gpuinv.inv(t)
    assert isinstance(r, torch.Tensor)
    assert r.device.type == "cpu"
    assert r.dtype == getattr(torch, expected)
    ref = np.linalg.inv(t.to(torch.complex128 if t.is_complex() else torch.float64).numpy())
    tol = 1e-10 if expected in ("float64", "complex128") else 1e-2
    np.testing.assert_allclose(r.numpy(), ref, rtol=tol, atol=tol)


def test_torch_cpu_input_is_viewed_not_copied(torch):
    t = torch.from_numpy(_stack(np.random.default_rng(1), (4, 5, 5)))
    imported = import_array(t, "torch")
    assert isinstance(imported.array, np.ndarray)
    assert np.shares_memory(imported.array, t.numpy())
    assert imported.device_id is None


def test_torch_cpu_result_shares_memory_with_numpy_result(torch):
    t = torch.from_numpy(_stack(np.random.default_rng(2), (4, 5, 5)))
    imported = import_array(t, "torch")
    x = gpuinv.inv(imported.array)
    back = imported.export(x)
    assert back.data_ptr() == x.ctypes.data


def test_torch_cpu_strided_input(torch):
    base = torch.from_numpy(_stack(np.random.default_rng(3), (8, 4, 4)))
    t = base[::2].transpose(-1, -2)  # non-contiguous view
    r = gpuinv.inv(t)
    np.testing.assert_allclose(r.numpy(), np.linalg.inv(t.numpy()), rtol=1e-10)


def test_torch_inv_ex_info_and_policy(torch):
    a = _stack(np.random.default_rng(4), (2, 3, 3, 3))
    a[0, 2] = 0.0  # singular at step 1
    a[1, 1, 0, 0] = np.nan
    t = torch.from_numpy(a)
    res = gpuinv.inv_ex(t)
    assert isinstance(res.inverse, torch.Tensor) and isinstance(res.info, torch.Tensor)
    assert res.info.dtype == torch.int32
    assert res.info.tolist() == [[0, 0, 1], [0, -1, 0]]
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(t)
    assert err.value.indices == [(0, 2), (1, 1)]
    r = gpuinv.inv(t, on_singular="nan")
    assert isinstance(r, torch.Tensor)
    assert torch.isnan(r[0, 2]).all() and torch.isnan(r[1, 1]).all()
    assert torch.isfinite(r[0, 0]).all()
    assert torch.isfinite(t[0, 0]).all()  # the input is left alone


def test_torch_conjugate_view(torch):
    a = _stack(np.random.default_rng(5), (3, 2, 2), np.complex128) * (1 + 1j)
    t = torch.from_numpy(a).conj()  # lazy conjugate bit
    assert t.is_conj()
    r = gpuinv.inv(t)
    np.testing.assert_allclose(r.resolve_conj().numpy(), np.linalg.inv(a.conj()), rtol=1e-10)


def test_torch_errors(torch):
    with pytest.raises(TypeError, match="detach"):
        gpuinv.inv(torch.eye(3, requires_grad=True))
    with pytest.raises(np.linalg.LinAlgError, match="square"):
        gpuinv.inv(torch.ones(2, 3))
    with pytest.raises(TypeError, match="'meta' are unsupported"):
        gpuinv.inv(torch.ones(2, 2, device="meta"))


def test_torch_parameter_subclass_without_grad(torch):
    p = torch.nn.Parameter(torch.eye(3, dtype=torch.float64) * 2, requires_grad=False)
    r = gpuinv.inv(p)
    assert isinstance(r, torch.Tensor)
    np.testing.assert_allclose(r.numpy(), np.eye(3) / 2)


# ---------------------------------------------------------------- JAX CPU


@pytest.fixture
def jax():
    return pytest.importorskip("jax")


def test_jax_cpu_roundtrip(jax):
    jnp = jax.numpy
    a = _stack(np.random.default_rng(6), (5, 4, 4), np.float32)
    j = jnp.asarray(a)
    r = gpuinv.inv(j)
    assert isinstance(r, jax.Array)
    assert r.dtype == jnp.float32
    assert r.devices() == j.devices()
    np.testing.assert_allclose(np.asarray(r), np.linalg.inv(a), rtol=1e-4, atol=1e-5)


def test_jax_cpu_input_is_viewed_not_copied(jax):
    j = jax.numpy.asarray(_stack(np.random.default_rng(7), (3, 3, 3), np.float32))
    imported = import_array(j, "jax")
    assert isinstance(imported.array, np.ndarray)
    # JAX hands out its own buffer, read-only: gpuinv must only read it.
    assert imported.array.ctypes.data == j.unsafe_buffer_pointer()
    assert not imported.array.flags.writeable


def test_jax_single_read_only_matrix(jax):
    # A batch of one read-only matrix once reached the closed forms as a view.
    j = jax.numpy.eye(2, dtype=jax.numpy.float32) * 4
    r = gpuinv.inv(j)
    np.testing.assert_allclose(np.asarray(r), np.eye(2) / 4)
    np.testing.assert_allclose(np.asarray(j), np.eye(2) * 4)


def test_jax_inv_ex_info_and_raise(jax):
    jnp = jax.numpy
    a = _stack(np.random.default_rng(8), (4, 3, 3), np.float32)
    a[3] = 0.0
    res = gpuinv.inv_ex(jnp.asarray(a))
    assert isinstance(res.info, jax.Array)
    assert res.info.dtype == jnp.int32
    assert np.asarray(res.info).tolist() == [0, 0, 0, 1]
    with pytest.raises(gpuinv.SingularMatrixError, match=r"batch indices \[3\]"):
        gpuinv.inv(jnp.asarray(a))


def test_jax_bfloat16_computes_in_float32(jax):
    jnp = jax.numpy
    r = gpuinv.inv(jnp.eye(3, dtype=jnp.bfloat16) * 2)
    assert r.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r), np.eye(3) / 2)


def test_jax_traced_value_is_refused(jax):
    with pytest.raises(TypeError, match="jax.jit"):
        jax.jit(gpuinv.inv)(jax.numpy.eye(2))
    with pytest.raises(TypeError, match="jax.jit"):
        jax.vmap(gpuinv.inv)(jax.numpy.ones((3, 2, 2)))


def test_jax_non_array_object_is_refused(jax):
    with pytest.raises(TypeError, match="unsupported JAX object"):
        gpuinv.inv(jax.ShapeDtypeStruct((2, 2), jax.numpy.float32))


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable CUDA device")
def test_torch_cuda_shares_memory_both_ways(torch):
    import cupy

    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    a = _stack(np.random.default_rng(9), (64, 8, 8))
    t = torch.from_numpy(a).cuda()
    imported = import_array(t, "torch")
    assert isinstance(imported.array, cupy.ndarray)
    assert imported.array.data.ptr == t.data_ptr()
    res = gpuinv.inv_ex(imported.array)
    back = imported.export(res.inverse)
    assert back.is_cuda and back.data_ptr() == res.inverse.data.ptr
    r = gpuinv.inv(t)
    assert r.is_cuda and r.device == t.device and r.dtype == torch.float64
    np.testing.assert_allclose(r.cpu().numpy(), np.linalg.inv(a), rtol=1e-9)
    ex = gpuinv.inv_ex(t)
    assert ex.info.is_cuda and ex.info.dtype == torch.int32


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable CUDA device")
def test_torch_cuda_singular_raise(torch):
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    a = _stack(np.random.default_rng(10), (5, 3, 3))
    a[2] = 0.0
    with pytest.raises(gpuinv.SingularMatrixError, match=r"\[2\]"):
        gpuinv.inv(torch.from_numpy(a).cuda())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="no usable CUDA device")
def test_jax_gpu_shares_memory_both_ways(jax):
    import cupy

    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        pytest.skip("JAX has no GPU backend")
    a = _stack(np.random.default_rng(11), (64, 8, 8), np.float32)
    j = jax.device_put(a, gpus[0])
    imported = import_array(j, "jax")
    assert isinstance(imported.array, cupy.ndarray)
    assert imported.array.data.ptr == j.unsafe_buffer_pointer()
    x = gpuinv.inv(imported.array)
    back = imported.export(x)
    assert back.unsafe_buffer_pointer() == x.data.ptr
    r = gpuinv.inv(j)
    assert r.devices() == j.devices()
    np.testing.assert_allclose(np.asarray(r), np.linalg.inv(a), rtol=1e-3, atol=1e-4)
