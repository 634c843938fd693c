"""A CPU stand-in for the small part of CuPy that the CUDA engine uses.

It lets the engine's own code (pointer arithmetic, the column-major
transposes, info folding, chunk seams, cuBLAS batch splitting, the pipeline's
buffers and the out-of-memory retry) run on a machine without a GPU. Device
arrays are NumPy arrays of a subclass that reports module "cupy"; "device
pointers" are host addresses; cuBLAS and cuSOLVER are replaced by a plain
LAPACK-style getf2 written here, which reads and writes through those
addresses exactly as the real libraries would. Streams run synchronously.

What it models, so that the engine's mistakes show up on a CPU:

* Devices: ``state.device_count`` devices (2 by default). Every allocation
  belongs to the current device (``with cupy.cuda.Device(i)``), ``.device``
  reports it, and library calls, copies and kernel launches check that the
  memory, handle and stream they get belong to the current device.
* Memory: a pool per device with ``state.device_bytes`` of memory and an
  optional limit (``get_default_memory_pool().set_limit``); ``memGetInfo``
  and the pool's ``used_bytes`` follow the live allocations, so the engine's
  planning bound is exercised end to end, and out-of-memory happens exactly
  where a route allocates. ``state.fail_above`` / ``state.fail_after`` inject
  it by size or by count. Zero-byte allocations have a NULL pointer, as in
  CuPy. What NumPy operations on device arrays return (arithmetic, astype,
  copy) is device memory of the current device in the pool's accounting, as
  CuPy's results are (not in ``state.allocations``, and never failed).
* Copies: ``memcpyAsync`` checks that its kind matches where the pointers
  live (pinned host, device) and logs the kind and stream of each enqueue in
  ``state.log``, as do the cuBLAS/cuSOLVER calls (with the stream set on the
  handle) and the kernel stand-in.
* Pinned memory: ``alloc_pinned_memory`` draws from a pool that keeps freed
  blocks; a block freed for good goes through ``runtime.freeHost``, which
  records itself in ``state.host_frees`` (on a GPU it synchronizes the whole
  device).
* Library quirks the engine must not rely on: ``state.pivot_report``
  ("first" or "last") picks which zero pivot getrf's info names, and
  ``state.getrf_work_size`` what ``<t>getrf_bufferSize`` answers.

The library and runtime functions take exactly the arguments of CuPy 14's
wrappers (tests/test_cupy_signatures.py pins them against the installed
CuPy). This does not check CuPy's real behaviour: the GPU tests do. It checks
that the engine's logic is right given the documented behaviour of the calls
it makes.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import types
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class OutOfMemoryError(MemoryError):
    pass


class FakeCudaError(AssertionError):
    """A call the real CUDA would reject (or that would corrupt memory)."""


class _State:
    """Knobs and records for tests; reset by :func:`installed`."""

    generation = 0

    def reset(self) -> None:
        self.generation += 1
        self.fail_above: int | None = None  # allocations above this many bytes fail
        self.fail_after: int | None = None  # every allocation after the first N fails
        self.allocations: list[int] = []  # bytes of each allocation, in order
        self.device_count = 2
        self.device_bytes = 1 << 40  # memory of each device
        self.pool_limit = 0  # the default pool's limit (0: none)
        self.used: dict[int, int] = {}  # device -> live bytes
        self.peak: dict[int, int] = {}  # device -> the most live bytes seen
        self.oom_count = 0  # out-of-memory errors raised by the pool limit
        self.device_ranges: dict[int, tuple[int, int]] = {}  # address -> (bytes, device)
        self.pinned_ranges: dict[int, int] = {}  # address -> bytes
        self.log: list[tuple] = []  # (call, stream ptr, device, ...) of every enqueue
        self.host_frees: list[int] = []  # runtime.freeHost calls
        self.pivot_report = "first"  # which zero pivot getrf's info names
        self.getrf_work_size: int | None = None  # None: 8 n elements
        self.handle_stream: dict[int, int] = {}  # cuBLAS/cuSOLVER handle -> stream ptr

    def __init__(self) -> None:
        self.reset()


state = _State()
_local = threading.local()


def _devices() -> list[int]:
    if not hasattr(_local, "devices"):
        _local.devices = [0]
    return _local.devices


def _current_device() -> int:
    return _devices()[-1]


class _Data:
    """CuPy's MemoryPointer: an address, its device, and what owns the memory."""

    def __init__(self, ptr: int, device_id: int = 0, owner=None) -> None:
        self.ptr = ptr
        self.device_id = device_id
        self.owner = owner


class _Device:
    def __init__(self, device: int | None = None) -> None:
        self.id = _current_device() if device is None else int(device)
        if not 0 <= self.id < state.device_count:
            raise FakeCudaError(f"no CUDA device {self.id}")

    def __enter__(self):
        _devices().append(self.id)
        return self

    def __exit__(self, *exc):
        _devices().pop()
        return False

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def synchronize(self) -> None:
        pass


class ndarray(np.ndarray):
    """A "device" array: NumPy memory, CuPy's face."""

    _device_id = 0
    _null = False
    _owner = None

    def __new__(cls, shape, dtype=float, memptr=None, strides=None, order="C"):
        """CuPy's constructor: new memory, or a view of ``memptr`` with ``strides``."""
        if memptr is None:
            return _empty(shape, dtype)
        shape = tuple(shape)
        dtype = np.dtype(dtype)
        strides = tuple(strides) if strides is not None else None
        if strides is None:
            strides = tuple(int(np.prod(shape[i + 1 :])) * dtype.itemsize for i in range(len(shape)))
        lo = sum(min(0, s * (d - 1)) for s, d in zip(strides, shape))
        hi = sum(max(0, s * (d - 1)) for s, d in zip(strides, shape)) + dtype.itemsize
        buf = (ctypes.c_char * (hi - lo)).from_address(memptr.ptr + lo)
        with _wrapping():
            arr = np.ndarray(shape, dtype, buffer=buf, offset=-lo, strides=strides).view(cls)
        arr._device_id = memptr.device_id
        arr._owner = memptr.owner  # keeps the memory alive
        return arr

    def __array_finalize__(self, obj):
        self._device_id = getattr(obj, "_device_id", _current_device())
        self._null = getattr(obj, "_null", False)
        self._owner = getattr(obj, "_owner", None)
        if _new_memory(self):
            # NumPy made this array's memory (arithmetic, astype, copy): CuPy
            # would have allocated it on the current device.
            self._device_id = _current_device()
            self._null = False
            self._owner = None
            _register_result(self if self.base is None else self.base)

    @property
    def data(self):  # type: ignore[override]
        return _Data(0 if self._null else self.ctypes.data, self._device_id, self)

    @property
    def device(self):
        return _Device(self._device_id)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ctypes.data, False),
                "version": 3}

    def get(self):
        return np.array(self.view(np.ndarray))


ndarray.__module__ = "cupy"


# --- device memory ------------------------------------------------------------------

_ALIGN = 256  # CuPy's allocations are 256-byte aligned


@contextmanager
def _wrapping():
    """While _empty and ndarray() view memory they have accounted for already."""
    _local.wrapping = True
    try:
        yield
    finally:
        _local.wrapping = False


def _new_memory(arr: ndarray) -> bool:
    """Whether NumPy just allocated ``arr``'s memory, as the result of an operation.

    astype and copy give an array that owns its memory; a ufunc gives a view
    of a plain array that does. A view of a device array has that array (or
    what it views) as its base.
    """
    if getattr(_local, "wrapping", False):
        return False
    base = arr.base
    return base is None or (type(base) is np.ndarray and base.base is None)


def _register_result(owner: np.ndarray) -> None:
    """Make the memory of ``owner`` device memory of the current device, in the pool's accounting.

    CuPy allocates the results of its operations from the current device's
    pool. They are not in ``state.allocations`` and the injected failures do
    not apply: those stand for the allocations a route makes itself.
    """
    nbytes = owner.nbytes
    if not nbytes:
        return
    device = _current_device()
    rounded = -(-nbytes // 512) * 512
    ptr = owner.ctypes.data
    state.used[device] = state.used.get(device, 0) + rounded
    state.peak[device] = max(state.peak.get(device, 0), state.used[device])
    state.device_ranges[ptr] = (nbytes, device)
    weakref.finalize(owner, _release, ptr, rounded, device, state.generation)


def _release(ptr: int, nbytes: int, device: int, generation: int) -> None:
    if generation != state.generation:
        return  # allocated before the last reset
    state.used[device] = state.used.get(device, 0) - nbytes
    state.device_ranges.pop(ptr, None)


def _limit() -> int:
    return state.device_bytes if state.pool_limit <= 0 else min(state.device_bytes, state.pool_limit)


def _empty(shape, dtype) -> ndarray:
    """Allocate on the current device, through the pool's accounting."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    device = _current_device()
    if state.fail_above is not None and nbytes > state.fail_above:
        raise OutOfMemoryError(nbytes, 0)
    if state.fail_after is not None and len(state.allocations) >= state.fail_after:
        raise OutOfMemoryError(nbytes, 0)
    rounded = -(-nbytes // 512) * 512  # CuPy rounds to 512 bytes
    if state.used.get(device, 0) + rounded > _limit():
        state.oom_count += 1
        raise OutOfMemoryError(nbytes, _limit())
    state.allocations.append(nbytes)
    # Pool memory is never fresh: another call's leftovers (finite, large).
    raw = np.full(nbytes + _ALIGN, 0x7F, dtype=np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    with _wrapping():
        arr = raw[off : off + nbytes].view(dtype).reshape(shape).view(ndarray)
    arr._owner = raw
    arr._device_id = device
    arr._null = nbytes == 0
    ptr = raw.ctypes.data + off
    state.used[device] = state.used.get(device, 0) + rounded
    state.peak[device] = max(state.peak.get(device, 0), state.used[device])
    if nbytes:
        state.device_ranges[ptr] = (nbytes, device)
    weakref.finalize(raw, _release, ptr, rounded, device, state.generation)
    return arr


def _alloc(arr: np.ndarray) -> ndarray:
    """A device copy of host data ``arr``."""
    out = _empty(arr.shape, arr.dtype)
    out[...] = arr
    return out


def _where_memory(ptr: int, nbytes: int) -> tuple[str, int | None]:
    """("device", id), ("pinned", None) or ("pageable", None) for [ptr, ptr + nbytes)."""
    for base, (size, device) in state.device_ranges.items():
        if base <= ptr and ptr + nbytes <= base + size:
            return "device", device
    for base, size in state.pinned_ranges.items():
        if base <= ptr and ptr + nbytes <= base + size:
            return "pinned", None
    return "pageable", None


def _check_device_memory(what: str, ptr: int, nbytes: int) -> None:
    kind, device = _where_memory(ptr, nbytes)
    if kind != "device":
        raise FakeCudaError(f"{what}: {nbytes} bytes at {ptr:#x} are not device memory")
    if device != _current_device():
        raise FakeCudaError(f"{what}: memory of device {device} used on device {_current_device()}")


def empty(shape, dtype=np.float64):
    return _empty(shape, dtype)


def zeros(shape, dtype=np.float64):
    out = _empty(shape, dtype)
    out[...] = 0
    return out


def empty_like(prototype, dtype=None):
    return _empty(prototype.shape, prototype.dtype if dtype is None else dtype)


def eye(N, M=None, k=0, dtype=np.float64):
    return _alloc(np.eye(N, M, k, dtype=dtype))


def arange(start, stop=None, step=1, dtype=None):
    if stop is None:
        start, stop = 0, start
    return _alloc(np.arange(start, stop, step, dtype=dtype))


def asarray(a, dtype=None):
    return _alloc(np.array(a, dtype=dtype))


def asnumpy(a):
    return np.array(np.asarray(a).view(np.ndarray))


def _check_aligned(what: str, arr) -> None:
    # CuPy's kernels load whole elements (complex128: 16 bytes at once).
    if isinstance(arr, ndarray) and arr.size and any(
            v % arr.itemsize for v in (arr.data.ptr, *arr.strides)):
        raise FakeCudaError(f"misaligned address: {what} at {arr.data.ptr:#x} for itemsize "
                            f"{arr.itemsize}")


def copyto(dst, src, casting="same_kind", where=None):
    _check_aligned("copyto dst", dst)
    _check_aligned("copyto src", src)
    np.copyto(dst, src, casting=casting, where=True if where is None else where)


isfinite = np.isfinite
where = np.where
uint64 = np.uint64
int32 = np.int32


class _Pool:
    def free_all_blocks(self):
        pass

    def free_bytes(self):
        return 0  # freed blocks go straight back to the device here

    def used_bytes(self):
        return state.used.get(_current_device(), 0)

    def get_limit(self):
        return state.pool_limit

    def set_limit(self, size=None, fraction=None):
        state.pool_limit = int(size or 0)


_pool = _Pool()


def get_default_memory_pool():
    return _pool


# --- cupy.cuda: streams and events ----------------------------------------------------


class _Event:
    done = True

    def __init__(self, stream=None):
        self.stream = stream

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


_stream_device: dict[int, int] = {0: -1}  # stream ptr -> device (-1: the null stream, any)


class Stream:
    _next = [100]  # noqa: RUF012 - a shared counter

    def __init__(self, null=False, non_blocking=False):
        Stream._next[0] += 1
        self.ptr = 0 if null else Stream._next[0]
        self.device_id = _current_device()
        if not null:
            _stream_device[self.ptr] = self.device_id
        self.done = True

    def __enter__(self):
        _streams().append(self)
        return self

    def __exit__(self, *exc):
        _streams().pop()
        return False

    def record(self, event=None):
        state.log.append(("record", self.ptr, _current_device()))
        return _Event(self)

    def synchronize(self) -> None:
        pass


Stream.null = Stream(null=True)


def _streams() -> list[Stream]:
    if not hasattr(_local, "streams"):
        _local.streams = [Stream.null]
    return _local.streams


def get_current_stream():
    return _streams()[-1]


def _check_stream(what: str, stream: int) -> None:
    device = _stream_device.get(stream)
    if device is None:
        raise FakeCudaError(f"{what}: unknown stream {stream}")
    if device not in (-1, _current_device()):
        raise FakeCudaError(f"{what}: stream of device {device} used on device {_current_device()}")


# --- cupy.cuda: pinned host memory ----------------------------------------------------


def _free_host(ptr):
    """runtime.freeHost: on a GPU, cudaFreeHost synchronizes the whole device."""
    if state.pinned_ranges.pop(ptr, None) is not None:  # not memory of before the last reset
        state.host_frees.append(ptr)


class PinnedMemory:
    """cudaHostAlloc'd memory, freed (through runtime.freeHost) when dropped."""

    def __init__(self, size, flags=0):
        self._buf = np.zeros(max(size, 1), dtype=np.uint8)
        self.ptr = self._buf.ctypes.data
        self.size = size
        state.pinned_ranges[self.ptr] = self._buf.size
        weakref.finalize(self, _free_host, self.ptr)


class PinnedMemoryPointer(np.ndarray):
    """CuPy's pointer into pinned memory; supports the buffer protocol."""

    def __new__(cls, mem, offset):
        obj = mem._buf[offset:].view(cls)
        obj.mem = mem
        return obj

    def __array_finalize__(self, obj):
        self.mem = getattr(obj, "mem", None)

    @property
    def ptr(self):
        return self.ctypes.data


class PinnedMemoryPool:
    """Keeps freed blocks for reuse, as CuPy's does: nothing reaches freeHost
    until ``free_all_blocks``, and a block serves only a request of its own
    (rounded) size."""

    def __init__(self):
        self._free: list[PinnedMemory] = []
        self._lock = threading.Lock()
        self.allocated = 0  # bytes of all blocks ever allocated

    def malloc(self, size):
        size = -(-size // 512) * 512  # CuPy rounds to 512 bytes
        with self._lock:
            for i, mem in enumerate(self._free):
                if mem.size == size:
                    del self._free[i]
                    break
            else:
                mem = PinnedMemory(size)
                self.allocated += size
        ptr = PinnedMemoryPointer(mem, 0)
        weakref.finalize(ptr, self._give_back, mem)
        return ptr

    def _give_back(self, mem):
        with self._lock:
            self._free.append(mem)

    def free_all_blocks(self):
        with self._lock:
            self._free.clear()

    def n_free_blocks(self):
        return len(self._free)


_pinned_pool = PinnedMemoryPool()


def get_default_pinned_memory_pool():
    return _pinned_pool


def alloc_pinned_memory(size):
    return _pinned_pool.malloc(size)


# --- cuBLAS / cuSOLVER stand-ins: a plain getf2, through the pointers -----------------


def _mem(ptr: int, nbytes: int, dtype) -> np.ndarray:
    if ptr == 0:
        raise FakeCudaError("NULL pointer")
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype)


def _cabs1(z):
    return np.abs(z.real) + np.abs(z.imag) if np.iscomplexobj(z) else np.abs(z)


def _getf2(m: np.ndarray) -> tuple[np.ndarray, int]:
    """LAPACK getf2 on a column-major n x n view ``m`` (m[i, j] is row i, col j).

    info names the first zero pivot, or the last one under
    ``state.pivot_report == "last"`` (neither cuBLAS nor cuSOLVER documents
    which).
    """
    n = m.shape[0]
    piv = np.zeros(n, dtype=np.int32)
    zero_steps = []
    with np.errstate(all="ignore"):
        for k in range(n):
            p = k + int(np.argmax(_cabs1(m[k:, k])))
            piv[k] = p + 1
            if m[p, k] != 0:
                if p != k:
                    m[[k, p], :] = m[[p, k], :]
                m[k + 1 :, k] /= m[k, k]
            else:
                zero_steps.append(k + 1)
            m[k + 1 :, k + 1 :] -= np.outer(m[k + 1 :, k], m[k, k + 1 :])
    if not zero_steps:
        return piv, 0
    return piv, zero_steps[-1] if state.pivot_report == "last" else zero_steps[0]


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
    nbytes = n * n * np.dtype(dtype).itemsize
    _check_device_memory("matrix", ptr, nbytes)
    return _mem(ptr, nbytes, dtype).reshape(n, n).T


_handles: dict[int, int] = {}  # handle -> device


def _enqueue(call: str, handle: int, *extra) -> None:
    if _handles.get(handle) != _current_device():
        raise FakeCudaError(f"{call}: handle of device {_handles.get(handle)} used on device "
                            f"{_current_device()}")
    stream = state.handle_stream.get(handle, 0)
    _check_stream(call, stream)
    state.log.append((call, stream, _current_device()) + extra)


def _make_blas(dtype):
    # Argument names and order: CuPy 14's cublas.pyx / cusolver.pyx wrappers.
    def getrfBatched(handle, n, Aarray, lda, PivotArray, infoArray, batchSize):
        assert lda == n and 0 < batchSize <= 65535
        _enqueue("getrfBatched", handle, batchSize)
        _check_device_memory("Aarray", Aarray, 8 * batchSize)
        ptrs = _mem(Aarray, 8 * batchSize, np.uint64)
        _check_device_memory("PivotArray", PivotArray, 4 * n * batchSize)
        _check_device_memory("infoArray", infoArray, 4 * batchSize)
        pivs = _mem(PivotArray, 4 * n * batchSize, np.int32).reshape(batchSize, n)
        infos = _mem(infoArray, 4 * batchSize, np.int32)
        for i, p in enumerate(ptrs):
            pivs[i], infos[i] = _getf2(_colmajor(int(p), n, dtype))
        calls.append(("getrfBatched", batchSize))

    def getriBatched(handle, n, Aarray, lda, PivotArray, Carray, ldc, infoArray, batchSize):
        assert lda == n and ldc == n and 0 < batchSize <= 65535
        _enqueue("getriBatched", handle, batchSize)
        aps = _mem(Aarray, 8 * batchSize, np.uint64)
        cps = _mem(Carray, 8 * batchSize, np.uint64)
        pivs = _mem(PivotArray, 4 * n * batchSize, np.int32).reshape(batchSize, n)
        infos = _mem(infoArray, 4 * batchSize, np.int32)
        for i in range(batchSize):
            lu = _colmajor(int(aps[i]), n, dtype)
            zero = np.flatnonzero(np.diag(lu) == 0)
            if zero.size:
                # Documented only as "info > 0": the inverse is not computed,
                # so C keeps whatever the memory held.
                infos[i] = zero[-1 if state.pivot_report == "last" else 0] + 1
                continue
            infos[i] = 0
            _colmajor(int(cps[i]), n, dtype)[...] = _lu_inverse(lu, pivs[i])

    def getrf(handle, m, n, A, lda, work, devIpiv, devInfo):
        assert m == n == lda
        _enqueue("getrf", handle)
        _check_device_memory("work", work, 1)  # a NULL workspace is rejected
        _check_device_memory("devIpiv", devIpiv, 4 * n)
        _check_device_memory("devInfo", devInfo, 4)
        piv, info = _getf2(_colmajor(A, n, dtype))
        _mem(devIpiv, 4 * n, np.int32)[...] = piv
        _mem(devInfo, 4, np.int32)[0] = info

    def getrs(handle, trans, n, nrhs, A, lda, devIpiv, B, ldb, devInfo):
        assert trans == 0 and nrhs == n == lda == ldb
        _enqueue("getrs", handle)
        lu = _colmajor(A, n, dtype)
        piv = _mem(devIpiv, 4 * n, np.int32)
        rhs = _colmajor(B, n, dtype)
        with np.errstate(all="ignore"):
            rhs[...] = _lu_inverse(lu, piv) @ rhs
        _mem(devInfo, 4, np.int32)[0] = 0

    def getrf_bufferSize(handle, m, n, A, lda):
        return 8 * n if state.getrf_work_size is None else state.getrf_work_size

    return getrfBatched, getriBatched, getrf, getrs, getrf_bufferSize


calls: list[tuple[str, int]] = []


# --- cupy.cuda.runtime ----------------------------------------------------------------

memcpyHostToHost = 0
memcpyHostToDevice = 1
memcpyDeviceToHost = 2
memcpyDeviceToDevice = 3
memcpyDefault = 4


def memcpyAsync(dst, src, size, kind, stream):
    """Checks that ``kind`` matches where dst and src live, and that both
    the device memory and the stream belong to the current device."""
    _check_stream("memcpyAsync", stream)
    expect = {memcpyHostToDevice: ("device", "pinned"), memcpyDeviceToHost: ("pinned", "device")}
    if kind not in expect:
        raise FakeCudaError(f"memcpyAsync: the engine uses only H2D and D2H, got kind {kind}")
    for what, ptr, want in (("dst", dst, expect[kind][0]), ("src", src, expect[kind][1])):
        got, device = _where_memory(ptr, size)
        if got != want:
            raise FakeCudaError(f"memcpyAsync kind {kind}: {what} is {got} memory, not {want}")
        if device is not None and device != _current_device():
            raise FakeCudaError(f"memcpyAsync: {what} on device {device}, current device "
                                f"{_current_device()}")
    state.log.append(("memcpyAsync", stream, _current_device(), kind, size))
    ctypes.memmove(dst, src, size)


def memGetInfo():
    return max(0, state.device_bytes - state.used.get(_current_device(), 0)), state.device_bytes


def getDeviceCount():
    return state.device_count


def getDevice():
    return _current_device()


def runtimeGetVersion():
    return 12080


def driverGetVersion():
    return 12080


def getDeviceProperties(device):
    return {"name": b"Fake GPU", "totalGlobalMem": state.device_bytes}


def freeHost(ptr):
    _free_host(ptr)


# --- the kernel route (gpuinv.kernels.invert_small) --------------------------------------
#
# THE ONE PLACE where the fake touches our kernels. install_kernel_stand_in
# wraps gpuinv.kernels.invert_small with the checks of what the GPU would fault
# on (a pointer not aligned to the element size, memory that is not the
# current device's, a stream that does not exist) and a log entry, then runs
# the REAL invert_small: its argument checks, its launch configuration and
# the real kernels.cu instantiation, executed on the CPU emulation of CUDA
# (tests/_cuda_emu.py) in place of the NVRTC-loaded function. Where the
# emulation cannot run (no g++ with sanitizers), the kernel is replaced by the
# CPU engine, which keeps the kernels' contract (info 0 / k / -1, NaN for -1)
# and leaves KERNEL_GARBAGE in the inverse of a singular matrix.

KERNEL_GARBAGE = 7.0  # what the CPU-engine fallback leaves in the inverse of a singular matrix

from gpuinv.kernels import invert_small as _real_invert_small  # noqa: E402 - before any patching
from gpuinv.kernels import invert_small_chol as _real_invert_small_chol  # noqa: E402
from gpuinv.kernels import invert_small_structured as _real_invert_small_structured  # noqa: E402
from gpuinv.kernels import solve_small as _real_solve_small  # noqa: E402

_use_emulation = False


def _check_kernel_launch(what, a, out, info, rcond=None, b=None):
    # What the GPU would fault on, and a log entry. `b`: the solve's right-hand sides.
    arrays = [("a", a), ("out", out), ("info", info)] + ([("rcond", rcond)] if rcond is not None else [])
    arrays += [("b", b)] if b is not None else []
    if a.ndim != 3 or not all(arr.flags.c_contiguous for _, arr in arrays):
        raise ValueError(f"{what} needs C-contiguous (m, n, n) arrays")
    for name, arr in arrays:
        if arr.data.ptr % arr.itemsize:
            raise FakeCudaError(f"misaligned address: {name} at {arr.data.ptr:#x} for itemsize "
                                f"{arr.itemsize}")
        _check_device_memory(f"{what} {name}", arr.data.ptr, arr.nbytes)
    stream = get_current_stream().ptr
    _check_stream(what, stream)
    state.log.append((what, stream, _current_device(), a.shape[0]))


def invert_small(a, out, info, *, rcond=None, max_blocks=None):
    _check_kernel_launch("invert_small", a, out, info, rcond)
    if _use_emulation:
        _real_invert_small(a, out, info, rcond=rcond, max_blocks=max_blocks)
        return
    import gpuinv  # the CPU engine: its info codes are the kernels' (getrf's steps)

    res = gpuinv.inv_ex(np.asarray(a).view(np.ndarray), rcond=rcond is not None, device="cpu")
    out[...] = res.inverse
    info[...] = res.info
    if rcond is not None:
        rcond[...] = res.rcond
    out[res.info > 0] = KERNEL_GARBAGE


def invert_small_chol(a, out, info, *, rcond=None, max_blocks=None):
    # The Cholesky kernel (gpuinv.kernels.invert_small_chol), the same way:
    # the real launcher and the emulated inv_chol_thread, or the CPU engine's
    # positive definite inverse (the kernel's contract: potrf's info, NaN
    # where info != 0, only the lower triangle read) where g++ cannot build it.
    _check_kernel_launch("invert_small_chol", a, out, info, rcond)
    if _use_emulation:
        _real_invert_small_chol(a, out, info, rcond=rcond, max_blocks=max_blocks)
        return
    import gpuinv

    res = gpuinv.inv_ex(np.asarray(a).view(np.ndarray), assume_a="positive definite", lower=True,
                        rcond=rcond is not None, device="cpu")
    out[...] = res.inverse
    info[...] = res.info
    if rcond is not None:
        rcond[...] = res.rcond


emulated_kernels: dict = {}  # KernelSpec -> _cuda_emu.EmulatedKernel, shared by the tests of a session


def invert_small_structured(a, out, info, structure, *, rcond=None, max_blocks=None):
    # The triangular and diagonal kernels (gpuinv.kernels.invert_small_structured),
    # the same way: the real launcher and the emulated inv_tri_thread /
    # inv_diag_thread, or the CPU engine's inverse of that structure (the
    # kernels' contract: trtri's info, NaN where info != 0, only the triangle
    # or the diagonal read) where g++ cannot build them.
    _check_kernel_launch("invert_small_structured", a, out, info, rcond)
    if _use_emulation:
        _real_invert_small_structured(a, out, info, structure, rcond=rcond, max_blocks=max_blocks)
        return
    import gpuinv

    res = gpuinv.inv_ex(np.asarray(a).view(np.ndarray), assume_a=structure, rcond=rcond is not None,
                        device="cpu")
    out[...] = res.inverse
    info[...] = res.info
    if rcond is not None:
        rcond[...] = res.rcond


def solve_small(a, b, x, info, *, max_blocks=None):
    # The LU solve kernel (gpuinv.kernels.solve_small), the same way: the
    # real launcher and the emulated solve_thread, or the CPU engine's solve
    # (the kernel's contract: the LU inverse's info codes, x all NaN where
    # info != 0) where g++ cannot build it.
    _check_kernel_launch("solve_small", a, x, info, b=b)
    if _use_emulation:
        _real_solve_small(a, b, x, info, max_blocks=max_blocks)
        return
    import gpuinv

    res = gpuinv.solve_ex(np.asarray(a).view(np.ndarray), np.asarray(b).view(np.ndarray), device="cpu")
    x[...] = res.solution
    info[...] = res.info


def install_kernel_stand_in(monkeypatch):
    global _use_emulation
    import gpuinv.kernels

    here = str(Path(__file__).resolve().parent)  # tests/, for _cuda_emu
    if here not in sys.path:
        sys.path.insert(0, here)
    import _cuda_emu

    _use_emulation = _cuda_emu.available() is None
    if _use_emulation:
        def load(spec, device_id):
            if spec not in emulated_kernels:
                emulated_kernels[spec] = _cuda_emu.EmulatedKernel(spec)
            return emulated_kernels[spec]

        monkeypatch.setattr(gpuinv.kernels, "_kernel", load)
    monkeypatch.setattr(gpuinv.kernels, "invert_small", invert_small)
    monkeypatch.setattr(gpuinv.kernels, "invert_small_chol", invert_small_chol)
    monkeypatch.setattr(gpuinv.kernels, "invert_small_structured", invert_small_structured)
    monkeypatch.setattr(gpuinv.kernels, "solve_small", solve_small)


# --- module assembly ------------------------------------------------------------------


__version__ = "0.0-fake"


def _get_handle(kind: int):
    handle = 1000 * kind + _current_device()
    _handles[handle] = _current_device()
    return handle


def _set_stream(handle, stream):
    state.handle_stream[handle] = stream


def _build_modules() -> dict[str, types.ModuleType]:
    cupy = sys.modules[__name__]
    cuda = types.ModuleType("cupy.cuda")
    cublas = types.ModuleType("cupy.cuda.cublas")
    cusolver = types.ModuleType("cupy.cuda.cusolver")
    runtime = types.ModuleType("cupy.cuda.runtime")
    device = types.ModuleType("cupy.cuda.device")
    memory = types.ModuleType("cupy.cuda.memory")
    cublas.CUBLAS_OP_N = 0

    def setStream(handle, stream):  # cublas.pyx and cusolver.pyx: (intptr_t handle, size_t stream)
        _set_stream(handle, stream)

    cublas.setStream = setStream
    cusolver.setStream = setStream
    for letter, dtype in zip("sdcz", (np.float32, np.float64, np.complex64, np.complex128)):
        rf_b, ri_b, rf, rs, bs = _make_blas(dtype)
        setattr(cublas, letter + "getrfBatched", rf_b)
        setattr(cublas, letter + "getriBatched", ri_b)
        setattr(cusolver, letter + "getrf", rf)
        setattr(cusolver, letter + "getrs", rs)
        setattr(cusolver, letter + "getrf_bufferSize", bs)
    for name in ("memcpyHostToHost", "memcpyHostToDevice", "memcpyDeviceToHost",
                 "memcpyDeviceToDevice", "memcpyDefault", "memcpyAsync", "memGetInfo",
                 "getDeviceCount", "getDevice", "runtimeGetVersion", "driverGetVersion",
                 "getDeviceProperties", "freeHost"):
        setattr(runtime, name, globals()[name])
    device.get_cublas_handle = lambda: _get_handle(1)
    device.get_cusolver_handle = lambda: _get_handle(2)
    memory.OutOfMemoryError = OutOfMemoryError
    cuda.cublas, cuda.cusolver, cuda.runtime = cublas, cusolver, runtime
    cuda.device, cuda.memory = device, memory
    cuda.Device = _Device
    cuda.Stream = Stream
    cuda.get_current_stream = get_current_stream
    cuda.PinnedMemory = PinnedMemory
    cuda.PinnedMemoryPointer = PinnedMemoryPointer
    cuda.PinnedMemoryPool = PinnedMemoryPool
    cuda.alloc_pinned_memory = alloc_pinned_memory
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
    import gc

    gc.collect()  # finalizers of an earlier test's arrays run now, not mid-test
    # What survived that collection (the suite's modules: NumPy, Numba, torch,
    # JAX, Dask) is moved out of the collector's sight, so the next test's
    # collect scans only what was made since: a full scan of that heap cost
    # 0.3 s per test, most of test_cuda_numerics_fake.py's time. It is still
    # freed by reference counting; only a reference cycle among those objects
    # would now stay until the end of the session.
    gc.freeze()
    state.reset()
    _pinned_pool.free_all_blocks()
    _pinned_pool.allocated = 0
    state.host_frees.clear()
    calls.clear()
    _handles.clear()
    _local.__dict__.clear()
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
