"""The CUDA engine's kernel route, end to end on the CPU, with the real kernels.

The CuPy stand-in (tests/_fake_cupy.py) provides the arrays, streams and
memory; the kernel it launches is not a stand-in: ``gpuinv.kernels._kernel``
hands out an :class:`_cuda_emu.EmulatedKernel`, which runs the real
kernels.cu instantiation on the CPU emulation of CUDA with the grid and block
that ``invert_small`` computed. So the gather, the dtype cast, the chunking,
the launch configuration and the kernel are all the real code; only CuPy's
array operations are stood in for.
"""

from __future__ import annotations

import _cuda_emu
import numpy as np
import pytest
from _helpers import invert
from test_cuda_fake import _fake_cupy, check, stack

import gpuinv
import gpuinv.kernels
from gpuinv._normalize import normalize
from gpuinv.engines import cuda as cuda_mod
from gpuinv.engines.cuda import CudaEngine

pytestmark = pytest.mark.skipif(_cuda_emu.available() is not None, reason=str(_cuda_emu.available()))


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@pytest.fixture
def emulated(monkeypatch):
    """The fake CuPy, with every kernel the engine loads running on the emulation."""
    loaded: dict[gpuinv.kernels.KernelSpec, _cuda_emu.EmulatedKernel] = {}

    def load(spec, device_id):
        if spec not in loaded:
            loaded[spec] = _cuda_emu.EmulatedKernel(spec)
        return loaded[spec]

    monkeypatch.setattr(gpuinv.kernels, "_kernel", load)
    with _fake_cupy.installed(monkeypatch) as module:
        yield module, loaded


@pytest.mark.parametrize(
    "dtype, n",
    [(np.float32, 2), (np.float64, 3), (np.complex64, 5), (np.complex128, 4),
     (np.float64, 9), (np.float32, 16), (np.complex128, 12)],
)  # fmt: skip
def test_device_and_host_input_through_the_real_kernels(emulated, rng, dtype, n):
    fake, loaded = emulated
    assert cuda_mod.routes.cuda_route(n, np.dtype(dtype)) == "kernel"  # dispatch itself picks the kernels
    a = stack(rng, (3, 5), n, dtype)
    for inp in (fake.asarray(a), a):
        x, info = invert(CudaEngine(None), normalize(inp), route="kernel")
        check(x, info, a)
    spec = gpuinv.kernels.kernel_spec(n, dtype)
    # Every launch used the launcher's configuration for its chunk.
    assert loaded[spec].launches
    for m, grid, block in loaded[spec].launches:
        assert (grid, block) == gpuinv.kernels.launch_config(spec, m)


def test_public_api_on_device_input_uses_the_kernels(emulated, rng):
    fake, loaded = emulated
    a = stack(rng, (40,), 3)
    res = gpuinv.inv_ex(fake.asarray(a))
    check(res.inverse, res.info, a)
    assert list(loaded) == [gpuinv.kernels.kernel_spec(3, np.float64)]
    with pytest.raises(gpuinv.SingularMatrixError) as err:
        gpuinv.inv(fake.asarray(a))
    assert err.value.indices == [(1,), (3,), (5,), (6,)]


def test_gathered_cast_and_strided_input(emulated, rng):
    fake, _ = emulated
    base = stack(rng, (12,), 4, failures=False)
    views = [base[::-2], base.swapaxes(-1, -2), base.astype(np.float16), (base * 3).astype(np.int16)]
    for v in views:
        x, info = invert(CudaEngine(None), normalize(fake.asarray(np.ascontiguousarray(v))[...]), route="kernel")
        check(x, info, np.asarray(v))
    d = fake.asarray(base)
    for v in (d[::-3], d.swapaxes(-1, -2), d[:, ::-1]):
        x, info = invert(CudaEngine(None), normalize(v), route="kernel")
        check(x, info, np.asarray(v))


def test_chunk_seams_on_the_kernel_route(emulated, rng, monkeypatch):
    fake, loaded = emulated
    a = stack(rng, (3, 7), 5)
    for per_chunk in (1, 4, 6):
        monkeypatch.setattr(gpuinv.config, "cuda_chunk_bytes", per_chunk * 25 * 8)
        x, info = invert(CudaEngine(None), normalize(fake.asarray(a)), route="kernel")
        check(x, info, a)
    sizes = {m for m, _, _ in loaded[gpuinv.kernels.kernel_spec(5, np.float64)].launches}
    assert len(sizes) > 1  # the stack really was cut into chunks
