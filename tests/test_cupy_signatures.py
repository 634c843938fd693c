"""Pin the CuPy 14 calls that the CUDA engine makes, and that
tests/_fake_cupy.py stands in for, to the installed CuPy's real wrappers.

The fake lets the engine's logic run on a CPU; this file makes sure the fake
answers to the same names and arguments as CuPy, so that a wrapper CuPy
changes (an argument added, renamed or reordered) fails CI here instead of
on a rare GPU run. Skipped where CuPy is not installed.

cuBLAS and cuSOLVER wrappers (``cupy_backends.cuda.libs.cublas`` /
``.cusolver``) are Cython modules linked against the CUDA libraries, which a
machine without the toolkit lacks. They are read in a child process that
stands in empty libraries of the names they link against (built with the C
compiler), loads the wrappers with lazy symbol binding, and reads each
wrapper's embedded signature (its docstring's first line) without calling
anything.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap

import _helpers
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")


_fake = _helpers.fake_cupy()
_FAKE = _fake._build_modules()

LETTERS = "sdcz"
CUBLAS = [f"{t}{name}" for t in LETTERS for name in ("getrfBatched", "getriBatched")] + ["setStream"]
CUSOLVER = [f"{t}{name}" for t in LETTERS for name in ("getrf", "getrs", "getrf_bufferSize")] + [
    "setStream"]
RUNTIME = ["memcpyAsync", "memGetInfo", "getDeviceCount", "getDevice", "runtimeGetVersion",
           "driverGetVersion", "getDeviceProperties", "freeHost"]
RUNTIME_CONSTANTS = ["memcpyHostToHost", "memcpyHostToDevice", "memcpyDeviceToHost",
                     "memcpyDeviceToDevice", "memcpyDefault"]


def parse_params(doc: str | None, name: str) -> list[str]:
    """Parameter names from a Cython embedded signature such as
    ``dgetrf(intptr_t handle, int m, size_t A, int lda=0) -> int``."""
    first = (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
    match = re.match(r"^(?:[\w.]+\.)?" + re.escape(name) + r"\((.*)\)", first)
    if match is None:
        raise AssertionError(f"no embedded signature for {name}: {first!r}")
    params = []
    for raw in match.group(1).split(","):
        part = raw.strip().replace("\\*", "*")
        if not part or part in ("/", "*") or part == "self":
            continue
        part = part.split("=")[0].strip()
        params.append(part.split()[-1].lstrip("*"))
    return params


def real_params(obj, name: str) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return parse_params(obj.__doc__, name)
    return [p for p in sig.parameters if p != "self"]


def fake_params(func) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


def test_parse_params():
    assert parse_params("dgetrf(intptr_t handle, int m, size_t A) -> int", "dgetrf") == [
        "handle", "m", "A"]
    assert parse_params("MemoryPool.set_limit(self, size=None, fraction=None)", "set_limit") == [
        "size", "fraction"]
    assert parse_params("memGetInfo()", "memGetInfo") == []
    with pytest.raises(AssertionError, match="no embedded signature"):
        parse_params("Returns things.", "memGetInfo")


# --- cupy.cuda.runtime: imports without a driver ----------------------------------------


@pytest.mark.parametrize("name", RUNTIME)
def test_runtime_wrappers(name):
    from cupy.cuda import runtime

    assert fake_params(getattr(_FAKE["cupy.cuda.runtime"], name)) == real_params(
        getattr(runtime, name), name)


def test_runtime_constants():
    from cupy.cuda import runtime

    for name in RUNTIME_CONSTANTS:
        assert getattr(_FAKE["cupy.cuda.runtime"], name) == getattr(runtime, name), name


# --- cuBLAS and cuSOLVER wrappers: read in a child process ------------------------------

_READ_WRAPPERS = textwrap.dedent(
    r"""
    import ctypes, importlib, json, os, re, subprocess, sys, tempfile, types

    compiler, names = sys.argv[1], json.loads(sys.argv[2])
    # Lazy binding: the wrappers' library symbols stay unresolved until called,
    # and nothing here calls them.
    sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)
    stubs = tempfile.mkdtemp()

    def stub(soname):
        src = os.path.join(stubs, "empty.c")
        with open(src, "w") as f:
            f.write("int gpuinv_signature_stub;\n")
        path = os.path.join(stubs, soname)
        subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname," + soname, "-o", path, src],
                       check=True, capture_output=True)
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)  # a later dlopen finds it by soname

    try:
        from cuda import pathfinder
    except ImportError:
        pathfinder = None
    if pathfinder is not None:
        real_load = pathfinder.load_nvidia_dynamic_lib

        def load(name):
            try:
                return real_load(name)
            except Exception:
                # CuPy asks pathfinder for the toolkit's libraries first; without
                # them, a handle of 0 makes its optional lookups search the
                # already loaded objects (RTLD_DEFAULT).
                return types.SimpleNamespace(_handle_uint=0, abs_path=None,
                                             was_already_loaded_from_elsewhere=False)

        pathfinder.load_nvidia_dynamic_lib = load

    out = {}
    for module, wanted in names.items():
        for _ in range(10):
            try:
                mod = importlib.import_module("cupy_backends.cuda.libs." + module)
                break
            except ImportError as exc:
                missing = re.search(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object", str(exc))
                if missing is None:
                    raise
                stub(missing.group(1))
        out[module] = {n: (getattr(mod, n).__doc__ or "") for n in wanted}
        out[module]["CUBLAS_OP_N"] = getattr(mod, "CUBLAS_OP_N", None)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def library_docs():
    compiler = next((c for c in ("cc", "gcc", "clang", "g++") if shutil.which(c)), None)
    if compiler is None:
        pytest.skip("no C compiler to stand in for the CUDA libraries")
    names = {"cublas": CUBLAS, "cusolver": CUSOLVER}
    proc = subprocess.run([sys.executable, "-c", _READ_WRAPPERS, compiler, json.dumps(names)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot load CuPy's cuBLAS/cuSOLVER wrappers here: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CUBLAS)
def test_cublas_wrappers(library_docs, name):
    real = parse_params(library_docs["cublas"][name], name)
    assert fake_params(getattr(_FAKE["cupy.cuda.cublas"], name)) == real


@pytest.mark.parametrize("name", CUSOLVER)
def test_cusolver_wrappers(library_docs, name):
    real = parse_params(library_docs["cusolver"][name], name)
    assert fake_params(getattr(_FAKE["cupy.cuda.cusolver"], name)) == real


def test_the_engine_call_shapes(library_docs):
    # The argument lists the engine passes, as CuPy 14 names them; the engine
    # calls each positionally (gpuinv/engines/cuda/cublas.py, cusolver.py).
    docs = library_docs
    assert parse_params(docs["cublas"]["dgetrfBatched"], "dgetrfBatched") == [
        "handle", "n", "Aarray", "lda", "PivotArray", "infoArray", "batchSize"]
    assert parse_params(docs["cublas"]["dgetriBatched"], "dgetriBatched") == [
        "handle", "n", "Aarray", "lda", "PivotArray", "Carray", "ldc", "infoArray", "batchSize"]
    assert parse_params(docs["cusolver"]["dgetrf"], "dgetrf") == [
        "handle", "m", "n", "A", "lda", "work", "devIpiv", "devInfo"]
    assert parse_params(docs["cusolver"]["dgetrs"], "dgetrs") == [
        "handle", "trans", "n", "nrhs", "A", "lda", "devIpiv", "B", "ldb", "devInfo"]
    assert parse_params(docs["cusolver"]["dgetrf_bufferSize"], "dgetrf_bufferSize") == [
        "handle", "m", "n", "A", "lda"]
    assert docs["cublas"]["CUBLAS_OP_N"] == _FAKE["cupy.cuda.cublas"].CUBLAS_OP_N == 0
    # getrf_bufferSize answers a count of elements of the matrix's type (the
    # engine allocates that many), returned as an int.
    assert "-> int" in docs["cusolver"]["dgetrf_bufferSize"]


# --- the Python-level API: the fake accepts only what CuPy accepts ------------------------


def _python_api():
    fake, cuda = _fake, _FAKE["cupy.cuda"]
    return [
        ("empty", cupy.empty, fake.empty),
        ("zeros", cupy.zeros, fake.zeros),
        ("empty_like", cupy.empty_like, fake.empty_like),
        ("eye", cupy.eye, fake.eye),
        ("arange", cupy.arange, fake.arange),
        ("asarray", cupy.asarray, fake.asarray),
        ("asnumpy", cupy.asnumpy, fake.asnumpy),
        ("copyto", cupy.copyto, fake.copyto),
        ("alloc_pinned_memory", cupy.cuda.alloc_pinned_memory, cuda.alloc_pinned_memory),
        ("malloc", cupy.cuda.PinnedMemoryPool.malloc, fake.PinnedMemoryPool.malloc),
        ("Stream", cupy.cuda.Stream, fake.Stream),
        ("record", cupy.cuda.Stream.record, fake.Stream.record),
        ("synchronize", cupy.cuda.Stream.synchronize, fake.Stream.synchronize),
        ("Device", cupy.cuda.Device, fake._Device),
        ("get_cublas_handle", cupy.cuda.device.get_cublas_handle,
         _FAKE["cupy.cuda.device"].get_cublas_handle),
        ("get_cusolver_handle", cupy.cuda.device.get_cusolver_handle,
         _FAKE["cupy.cuda.device"].get_cusolver_handle),
        ("set_limit", cupy.cuda.MemoryPool.set_limit, fake._Pool.set_limit),
        ("get_limit", cupy.cuda.MemoryPool.get_limit, fake._Pool.get_limit),
        ("free_bytes", cupy.cuda.MemoryPool.free_bytes, fake._Pool.free_bytes),
        ("used_bytes", cupy.cuda.MemoryPool.used_bytes, fake._Pool.used_bytes),
        ("PinnedMemory", cupy.cuda.PinnedMemory, fake.PinnedMemory),
        ("PinnedMemoryPointer", cupy.cuda.PinnedMemoryPointer, fake.PinnedMemoryPointer),
        ("diagonal", cupy.ndarray.diagonal, np.ndarray.diagonal),
    ]


@pytest.mark.parametrize("name, real, stand_in", _python_api(), ids=[t[0] for t in _python_api()])
def test_python_api(name, real, stand_in):
    real_names = real_params(real, name)
    try:
        fake_names = fake_params(stand_in)
    except (TypeError, ValueError):  # a NumPy method: its own signature is in its docstring
        pytest.skip(f"{name}: the fake uses NumPy's")
    if fake_names and fake_names[-1] == "kw":
        fake_names = fake_names[:-1]
    # Same order for the arguments the fake takes; CuPy may take more.
    assert fake_names == real_names[: len(fake_names)], (name, fake_names, real_names)


def test_engine_keywords_exist_in_cupy():
    # Keywords the engine passes by name.
    assert {"casting", "where"} <= set(real_params(cupy.copyto, "copyto"))
    assert {"axis1", "axis2"} <= set(real_params(cupy.ndarray.diagonal, "diagonal"))
    assert "axis" in real_params(cupy.ndarray.min, "min")
    assert "non_blocking" in real_params(cupy.cuda.Stream, "Stream")
    assert "size" in real_params(cupy.cuda.MemoryPool.set_limit, "set_limit")
    assert real_params(cupy.cuda.memory.OutOfMemoryError, "OutOfMemoryError")[:2] == ["size",
                                                                                      "total"]
    assert hasattr(cupy.cuda.PinnedMemoryPointer, "ptr")


def test_ndarray_constructor():
    # _realigned builds a view of raw memory: cupy.ndarray(shape, dtype,
    # memptr, strides). Cython's class signature is in the docstring.
    real = parse_params(cupy.ndarray.__doc__.replace("__init__(", "ndarray(", 1), "ndarray")
    assert real[:4] == ["shape", "dtype", "memptr", "strides"]
    fake = [p for p in inspect.signature(_fake.ndarray.__new__).parameters if p != "cls"]
    assert fake == real
