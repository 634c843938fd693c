"""A CPU stand-in for the small part of CuPy that the CUDA engine uses.

It lets the engine's own code (pointer arithmetic, the column-major
transposes, info folding, chunk seams, cuBLAS batch splitting, the pipeline's
buffers and the out-of-memory retry) run on a machine without a GPU. Device
arrays are NumPy arrays of a subclass that reports module "cupy"; "device
pointers" are host addresses; cuBLAS and cuSOLVER are replaced by a plain
LAPACK-style getf2 written here, which reads and writes through those
addresses exactly as the real libraries would. Streams run synchronously.

This does not check CuPy's real API: the GPU tests do. It checks that the
engine's logic is right given the documented behaviour of the calls it makes.
"""

from __future__ import annotations

import ctypes
import sys
import types
from contextlib import contextmanager

import numpy as np


class OutOfMemoryError(MemoryError):
    pass


class _Data:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class _Device:
    def __init__(self, index: int | None = None) -> None:
        self.id = 0 if index is None else index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self) -> None:
        pass


class ndarray(np.ndarray):
    """A "device" array: NumPy memory, CuPy's face."""

    @property
    def data(self):  # type: ignore[override]
        return _Data(self.ctypes.data)

    @property
    def device(self):
        return _Device(0)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ctypes.data, False),
                "version": 3}

    def get(self):
        return np.array(self.view(np.ndarray))


ndarray.__module__ = "cupy"


class _State:
    """Knobs for tests: allocations above ``fail_above`` bytes, and every
    allocation after the first ``fail_after``, raise OOM."""

    fail_above: int | None = None
    fail_after: int | None = None
    allocations: list[int] = []  # noqa: RUF012 - reset by installed()
    free_bytes = 1 << 40


state = _State()


def _alloc(arr: np.ndarray) -> ndarray:
    if state.fail_above is not None and arr.nbytes > state.fail_above:
        raise OutOfMemoryError(arr.nbytes, 0)
    if state.fail_after is not None and len(state.allocations) >= state.fail_after:
        raise OutOfMemoryError(arr.nbytes, 0)
    state.allocations.append(arr.nbytes)
    return arr.view(ndarray)


def empty(shape, dtype=np.float64):
    return _alloc(np.empty(shape, dtype=dtype))


def zeros(shape, dtype=np.float64):
    return _alloc(np.zeros(shape, dtype=dtype))


def empty_like(a, dtype=None):
    return _alloc(np.empty_like(np.asarray(a), dtype=dtype))


def eye(n, dtype=np.float64):
    return _alloc(np.eye(n, dtype=dtype))


def arange(*args, dtype=None):
    return _alloc(np.arange(*args, dtype=dtype))


def asarray(a, dtype=None):
    return _alloc(np.array(a, dtype=dtype))


def asnumpy(a):
    return np.array(np.asarray(a).view(np.ndarray))


def copyto(dst, src, casting="same_kind", where=True):
    np.copyto(dst, src, casting=casting, where=where)


isfinite = np.isfinite
where = np.where
uint64 = np.uint64
int32 = np.int32


class _Pool:
    def free_all_blocks(self):
        pass

    def free_bytes(self):
        return 0

    def used_bytes(self):
        return 0

    def get_limit(self):
        return 0


_pool = _Pool()


def get_default_memory_pool():
    return _pool


# --- cupy.cuda -----------------------------------------------------------------------


class _Event:
    done = True

    def synchronize(self) -> None:
        pass


class Event:
    done = True

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def get_elapsed_time(start, end):
    return 1e3 * (end.t - start.t)


class _RandomState:
    def __init__(self, seed=0):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size, dtype=np.float64):
        return _alloc(self._rng.standard_normal(size).astype(dtype))


def _linalg_inv(a):
    return _alloc(np.linalg.inv(np.asarray(a)))


class Stream:
    _next = [100]  # noqa: RUF012 - a shared counter

    def __init__(self, null=False, non_blocking=False):
        Stream._next[0] += 1
        self.ptr = 0 if null else Stream._next[0]
        self.done = True

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()
        return False

    def record(self):
        return _Event()

    def synchronize(self) -> None:
        pass


_current: list[Stream] = [Stream(null=True)]


def get_current_stream():
    return _current[-1]


class PinnedMemory:
    def __init__(self, size, flags=0):
        self._buf = np.zeros(size, dtype=np.uint8)
        self.ptr = self._buf.ctypes.data
        self.size = size


def PinnedMemoryPointer(mem, offset):  # CuPy's name
    return mem._buf[offset:]


def _mem(ptr: int, nbytes: int, dtype) -> np.ndarray:
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype)


def _cabs1(z):
    return np.abs(z.real) + np.abs(z.imag) if np.iscomplexobj(z) else np.abs(z)


def _getf2(m: np.ndarray) -> tuple[np.ndarray, int]:
    """LAPACK getf2 on a column-major n x n view ``m`` (m[i, j] is row i, col j)."""
    n = m.shape[0]
    piv = np.zeros(n, dtype=np.int32)
    info = 0
    with np.errstate(all="ignore"):
        for k in range(n):
            p = k + int(np.argmax(_cabs1(m[k:, k])))
            piv[k] = p + 1
            if m[p, k] != 0:
                if p != k:
                    m[[k, p], :] = m[[p, k], :]
                m[k + 1 :, k] /= m[k, k]
            elif info == 0:
                info = k + 1
            m[k + 1 :, k + 1 :] -= np.outer(m[k + 1 :, k], m[k, k + 1 :])
    return piv, info


def _lu_inverse(lu: np.ndarray, piv: np.ndarray) -> np.ndarray:
    n = lu.shape[0]
    lower = np.tril(lu, -1) + np.eye(n)
    upper = np.triu(lu)
    perm = np.eye(n, dtype=lu.dtype)
    for k in range(n):
        p = piv[k] - 1
        perm[[k, p]] = perm[[p, k]]
    with np.errstate(all="ignore"):
        try:
            return np.linalg.solve(lower @ upper, perm)
        except np.linalg.LinAlgError:
            return np.full((n, n), np.inf, dtype=lu.dtype)


def _colmajor(ptr: int, n: int, dtype) -> np.ndarray:
    return _mem(ptr, n * n * np.dtype(dtype).itemsize, dtype).reshape(n, n).T


def _make_blas(dtype):
    def getrf_batched(handle, n, a_array, lda, piv_ptr, info_ptr, batch):
        assert lda == n and 0 < batch <= 65535
        ptrs = _mem(a_array, 8 * batch, np.uint64)
        pivs = _mem(piv_ptr, 4 * n * batch, np.int32).reshape(batch, n)
        infos = _mem(info_ptr, 4 * batch, np.int32)
        for i, p in enumerate(ptrs):
            pivs[i], infos[i] = _getf2(_colmajor(int(p), n, dtype))
        calls.append(("getrfBatched", batch))

    def getri_batched(handle, n, a_array, lda, piv_ptr, c_array, ldc, info_ptr, batch):
        assert lda == n and ldc == n and 0 < batch <= 65535
        aps = _mem(a_array, 8 * batch, np.uint64)
        cps = _mem(c_array, 8 * batch, np.uint64)
        pivs = _mem(piv_ptr, 4 * n * batch, np.int32).reshape(batch, n)
        infos = _mem(info_ptr, 4 * batch, np.int32)
        for i in range(batch):
            lu = _colmajor(int(aps[i]), n, dtype)
            u = np.diag(lu)
            zero = np.flatnonzero(u == 0)
            infos[i] = zero[0] + 1 if zero.size else 0
            _colmajor(int(cps[i]), n, dtype)[...] = _lu_inverse(lu, pivs[i])

    def getrf(handle, m, n, a, lda, work, piv_ptr, info_ptr):
        assert m == n == lda
        piv, info = _getf2(_colmajor(a, n, dtype))
        _mem(piv_ptr, 4 * n, np.int32)[...] = piv
        _mem(info_ptr, 4, np.int32)[0] = info

    def getrs(handle, trans, n, nrhs, a, lda, piv_ptr, b, ldb, info_ptr):
        assert trans == 0 and nrhs == n == lda == ldb
        lu = _colmajor(a, n, dtype)
        piv = _mem(piv_ptr, 4 * n, np.int32)
        rhs = _colmajor(b, n, dtype)
        with np.errstate(all="ignore"):
            rhs[...] = _lu_inverse(lu, piv) @ rhs
        _mem(info_ptr, 4, np.int32)[0] = 0

    def buffer_size(handle, m, n, a, lda):
        return 8 * n

    return getrf_batched, getri_batched, getrf, getrs, buffer_size


calls: list[tuple[str, int]] = []


__version__ = "0.0-fake"


def _build_modules() -> dict[str, types.ModuleType]:
    cupy = sys.modules[__name__]
    cuda = types.ModuleType("cupy.cuda")
    cublas = types.ModuleType("cupy.cuda.cublas")
    cusolver = types.ModuleType("cupy.cuda.cusolver")
    runtime = types.ModuleType("cupy.cuda.runtime")
    device = types.ModuleType("cupy.cuda.device")
    memory = types.ModuleType("cupy.cuda.memory")
    cublas.CUBLAS_OP_N = 0
    cublas.setStream = lambda handle, stream: None
    cusolver.setStream = lambda handle, stream: None
    for letter, dtype in zip("sdcz", (np.float32, np.float64, np.complex64, np.complex128)):
        rf_b, ri_b, rf, rs, bs = _make_blas(dtype)
        setattr(cublas, letter + "getrfBatched", rf_b)
        setattr(cublas, letter + "getriBatched", ri_b)
        setattr(cusolver, letter + "getrf", rf)
        setattr(cusolver, letter + "getrs", rs)
        setattr(cusolver, letter + "getrf_bufferSize", bs)
    runtime.memcpyHostToDevice = 1
    runtime.memcpyDeviceToHost = 2
    runtime.memcpyAsync = lambda dst, src, n, kind, stream: ctypes.memmove(dst, src, n)
    runtime.memGetInfo = lambda: (state.free_bytes, 2 * state.free_bytes)
    runtime.getDeviceCount = lambda: 1
    runtime.runtimeGetVersion = lambda: 12080
    runtime.driverGetVersion = lambda: 12080
    runtime.getDeviceProperties = lambda i: {"name": b"Fake GPU", "totalGlobalMem": 1 << 34}
    device.get_cublas_handle = lambda: 1
    device.get_cusolver_handle = lambda: 2
    memory.OutOfMemoryError = OutOfMemoryError
    cuda.cublas, cuda.cusolver, cuda.runtime = cublas, cusolver, runtime
    cuda.device, cuda.memory = device, memory
    cuda.Device = _Device
    cuda.Stream = Stream
    cuda.get_current_stream = get_current_stream
    cuda.PinnedMemory = PinnedMemory
    cuda.PinnedMemoryPointer = PinnedMemoryPointer
    cuda.is_available = lambda: True
    cuda.Event = Event
    cuda.get_elapsed_time = get_elapsed_time
    cupy.cuda = cuda
    cupy.random = types.SimpleNamespace(RandomState=_RandomState)
    cupy.linalg = types.SimpleNamespace(inv=_linalg_inv)
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.cublas": cublas,
            "cupy.cuda.cusolver": cusolver, "cupy.cuda.runtime": runtime,
            "cupy.cuda.device": device, "cupy.cuda.memory": memory}


@contextmanager
def installed(monkeypatch):
    """Put the fake in sys.modules for the duration of a test."""
    for name, module in _build_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    state.fail_above = None
    state.fail_after = None
    state.allocations = []
    state.free_bytes = 1 << 40
    calls.clear()
    yield sys.modules[__name__]


# --- kernel loading: cupy.cuda.function.Module ----------------------------------------
# (Added for gpuinv/kernels' own NVRTC path and benchmarks/gpu_check.py; kept apart
# from the rest so that it merges cleanly.) gpuinv compiles its kernels with NVRTC
# itself and loads the binary with ``cupy.cuda.function.Module``. The fake cannot run
# a kernel, but it checks what the loader hands it, as cuModuleLoadData and
# cuModuleGetFunction would: an ELF cubin (or NUL-terminated PTX text) that holds the
# mangled name asked for. ``Device.compute_capability`` is an H100/H200's.
# ``cupy.cuda.nvrtc`` is the real binding where CuPy is installed: NVRTC compiles
# without a GPU, so the kernels' compile path runs for real under the fake.

_Device.compute_capability = "90"

loaded_modules: list = []


class _Function:
    def __init__(self, module, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        raise NotImplementedError("the fake CuPy cannot run CUDA kernels")


class Module:
    def __init__(self) -> None:
        self.data: bytes | None = None

    def load(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Module.load takes bytes, got {type(data).__name__}")
        if not (data.startswith(b"\x7fELF") or b".target" in data[:4096]):
            raise RuntimeError("CUDA_ERROR_INVALID_IMAGE: neither a cubin nor PTX")
        self.data = data
        loaded_modules.append(self)

    def get_function(self, name: str) -> _Function:
        if self.data is None or name.encode() not in self.data:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        return _Function(self, name)


_build_modules_without_function = _build_modules


def _build_modules() -> dict[str, types.ModuleType]:  # noqa: F811 - extends the one above
    modules = _build_modules_without_function()
    function = types.ModuleType("cupy.cuda.function")
    function.Module = Module
    function.Function = _Function
    modules["cupy.cuda"].function = function
    modules["cupy.cuda.function"] = function
    try:
        from cupy_backends.cuda.libs import nvrtc  # the real binding, not the fake

        nvrtc.getVersion()  # loads libnvrtc now, through the real CuPy's library search
        modules["cupy.cuda"].nvrtc = nvrtc
    except Exception:  # noqa: BLE001 - no CuPy or no libnvrtc: as without the fake
        pass
    loaded_modules.clear()
    return modules
