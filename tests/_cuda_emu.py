"""Run gpuinv's CUDA kernels on the CPU: build and launch one instantiation at a time.

``tests/cuda_emu/cuda_emu.h`` emulates the CUDA that the kernels use (one
fiber per CUDA thread, block barriers, lockstep warp collectives with CUDA's
width rules, ``__shared__`` memory bounded by AddressSanitizer and poisoned
with NaN before each block). ``emu_main.cpp`` includes
``gpuinv/kernels/kernels.cu`` unchanged after it; g++ builds one executable
per :class:`gpuinv.kernels.KernelSpec` (the template arguments of its
``name_expression``) under AddressSanitizer and UBSan.

:func:`run` launches it with the grid and block that
:func:`gpuinv.kernels.launch_config` computes for the real launch, on
exact-size heap buffers, once per thread order (forward, reverse, shuffled);
the executable fails unless every order gives the same bits and the input is
left unwritten.

Builds are cached by content (sources, flags, instantiation) in
``$GPUINV_EMU_CACHE`` or ``<repo>/build/cuda_emu``, so a second test run in
the same checkout (CI runs the suite twice) compiles nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

import gpuinv.kernels as kernels

REPO = Path(__file__).resolve().parent.parent
EMU_DIR = Path(__file__).resolve().parent / "cuda_emu"
KERNEL_DIR = Path(kernels.__file__).resolve().parent
GXX = shutil.which("g++")
#: The headers kernels.cu includes (a mutated copy of kernels.cu needs them beside it).
HEADERS = ("inverse.cuh", "cholesky.cuh", "triangular.cuh")

# -O1 keeps the builds quick and the runs fast enough; -ffp-contract=off
# gives the same arithmetic as the host build of the kernels' math
# (tests/test_kernels_host.py), so results can be compared bit for bit.
CXXFLAGS = (
    "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer", "-ffp-contract=off",
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
    "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-variable",
)  # fmt: skip

#: Thread orders of every launch: forward, reverse and a shuffled order that
#: is drawn anew at every round of the scheduler.
DEFAULT_ORDERS = ("f", "r", "s1")

SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=0:abort_on_error=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}

_SHARED_DECL = re.compile(r"__shared__\s+[\w:<>, ]+?\s+(\w+)\s*\[")


class EmulationError(AssertionError):
    """The emulated kernel failed: a sanitizer report, a divergent collective, a race or a bad write."""

    def __init__(self, spec_name: str, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{spec_name}: emulated launch failed (exit {returncode}):\n{stderr[-4000:]}")


@functools.lru_cache(maxsize=None)
def available() -> str | None:
    """None if the harness can run here, else why not (no g++, or no sanitizer runtimes)."""
    if GXX is None:
        return "g++ is not installed"
    with tempfile.TemporaryDirectory(prefix="gpuinv-emu-probe-") as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text("int main() { return 0; }\n")
        result = subprocess.run([GXX, *CXXFLAGS, str(src), "-o", str(Path(tmp) / "probe")],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            return f"g++ cannot build with AddressSanitizer and UBSan here: {result.stderr.strip()[-300:]}"
    return None


def cache_dir() -> Path:
    path = Path(os.environ.get("GPUINV_EMU_CACHE") or REPO / "build" / "cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_names(source: str) -> list[str]:
    """The names of the ``__shared__`` arrays declared in ``source``."""
    return sorted(set(_SHARED_DECL.findall(source)))


def element_type(spec: kernels.KernelSpec) -> str:
    return kernels._CXX_TYPES[spec.dtype]


def build(spec: kernels.KernelSpec, kernel_dir: Path | None = None) -> Path:
    """Compile ``spec``'s emulation executable (cached) and return its path.

    ``kernel_dir`` holds ``kernels.cu`` and the :data:`HEADERS` (default: the
    package's own); the mutation tests pass a folder with an altered copy.
    """
    kdir = Path(kernel_dir or KERNEL_DIR)
    sources = [EMU_DIR / "cuda_emu.h", EMU_DIR / "emu_main.cpp", EMU_DIR / "emu_shared.cpp",
               kdir / "kernels.cu", *(kdir / h for h in HEADERS)]  # fmt: skip
    kernel_text = (kdir / "kernels.cu").read_text()
    names = shared_names(kernel_text)
    if not names:
        raise RuntimeError("kernels.cu declares no __shared__ array; update tests/_cuda_emu.py")
    defines = [
        f"-DEMU_T={element_type(spec)}",
        f"-DEMU_KERNEL={spec.name_expression}",
        f"-DEMU_CALL=EMU_KERNEL({', '.join(spec.params)})",
        # A kernel without a stage still declares the array: one byte it never touches.
        f"-DEMU_SHARED_BYTES={max(spec.shared_bytes, 1)}",
        "-DEMU_SHARED_NAMES(X)=" + " ".join(f"X({name})" for name in names),
    ]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    digest.update("\0".join((*CXXFLAGS, *defines)).encode())
    key = digest.hexdigest()[:20]
    exe = cache_dir() / f"{spec.dtype.name}-n{spec.n}-{spec.kind}-{key}"
    if exe.exists():
        return exe
    fd, tmp = tempfile.mkstemp(dir=exe.parent, prefix=exe.name + ".", suffix=".tmp")
    os.close(fd)
    cmd = [GXX, *CXXFLAGS, f"-I{EMU_DIR}", f"-I{kdir}", *defines,
           str(EMU_DIR / "emu_main.cpp"), str(EMU_DIR / "emu_shared.cpp"), "-o", tmp]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"g++ failed to build the emulation of {spec.name_expression}:\n{result.stderr[-6000:]}")
    os.replace(tmp, exe)
    return exe


def build_all(specs: Iterable[kernels.KernelSpec], jobs: int | None = None) -> dict[kernels.KernelSpec, Path]:
    """Build many instantiations in parallel (one g++ per core)."""
    specs = list(specs)
    jobs = jobs or max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(specs, pool.map(build, specs)))


def real_dtype(spec: kernels.KernelSpec) -> np.dtype:
    return np.dtype(spec.dtype.char.lower()) if spec.dtype.kind == "c" else spec.dtype


def run(
    spec: kernels.KernelSpec,
    a: np.ndarray,
    *,
    b: np.ndarray | None = None,
    max_blocks: int | None = None,
    orders: Iterable[str] = DEFAULT_ORDERS,
    exe: Path | None = None,
    timeout: float = 600,
) -> tuple[np.ndarray, ...]:
    """Launch ``spec`` on the stack ``a`` (shape (m, n, n)) as the real launcher would.

    ``b`` (shape (m, n, k)) is the right-hand sides of a kernel that takes
    them (``"b" in spec.params``). Returns ``(out, info)``, and ``rcond``
    after them for a kernel that writes it (``spec.rcond``). Raises
    :class:`EmulationError` if the run fails in any way (sanitizers,
    divergent collectives, deadlock, results that depend on the thread
    order, a write to an input).
    """
    a = np.ascontiguousarray(a, dtype=spec.dtype)
    m = a.shape[0]
    if a.shape != (m, spec.n, spec.n) or m < 1:
        raise ValueError(f"a must have shape (m >= 1, {spec.n}, {spec.n}), got {a.shape}")
    if ("b" in spec.params) != (b is not None):
        raise ValueError(f"{spec.name_expression} {'needs' if b is None else 'takes no'} right-hand sides b")
    if b is not None:
        b = np.ascontiguousarray(b, dtype=spec.dtype)
        if b.ndim != 3 or b.shape[:2] != (m, spec.n):
            raise ValueError(f"b must have shape ({m}, {spec.n}, k), got {b.shape}")
    grid, block = kernels.launch_config(spec, m, max_blocks)
    return _launch(spec, exe or build(spec), a, grid, block, orders, timeout, b=b)


def _launch(spec, exe, a, grid, block, orders=DEFAULT_ORDERS, timeout=600.0, b=None):
    m = a.shape[0]
    k = 0 if b is None else b.shape[-1]
    with tempfile.TemporaryDirectory(prefix="gpuinv-emu-") as tmp:
        paths = {name: Path(tmp) / f"{name}.bin" for name in ("a", "b", "out", "info", "rcond")}
        a.tofile(paths["a"])
        if b is not None:
            b.tofile(paths["b"])
        b_arg = str(paths["b"]) if b is not None else "-"
        rcond_arg = str(paths["rcond"]) if spec.rcond else "-"
        cmd = [str(exe), str(m), str(k), str(grid), str(block), ",".join(orders), str(paths["a"]), b_arg,
               str(paths["out"]), str(paths["info"]), rcond_arg]  # fmt: skip
        env = {**os.environ, **SANITIZER_ENV}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if result.returncode != 0:
            raise EmulationError(spec.name_expression, result.returncode, result.stderr)
        out = np.fromfile(paths["out"], dtype=spec.dtype).reshape(a.shape if b is None else b.shape)
        info = np.fromfile(paths["info"], dtype=np.int32)
        if not spec.rcond:
            return out, info
        return out, info, np.fromfile(paths["rcond"], dtype=real_dtype(spec))


class EmulatedKernel:
    """A loaded kernel for the CuPy stand-in (tests/_fake_cupy.py): launches run on the emulation.

    Called as CuPy calls a ``RawKernel``: ``kernel(grid, block, args)``, the
    arguments in the order of ``spec.params`` (the stand-in's device arrays,
    host memory, and a null pointer for an unwritten ``rcond``). The inputs
    are handed to the emulated kernel with exactly the grid and block that
    :func:`gpuinv.kernels.invert_small` chose, and the outputs are written
    into ``out``, ``info`` (and ``rcond``) in place, as the GPU would. ``launches`` records
    each launch's (m, grid, block).
    """

    def __init__(self, spec: kernels.KernelSpec) -> None:
        self.spec = spec
        self.exe = build(spec)
        self.launches: list[tuple[int, int, int]] = []

    def __call__(self, grid, block, args, **kwargs) -> None:
        if len(args) != len(self.spec.params):
            raise AssertionError(f"kernel launched with {len(args)} arguments, it takes {self.spec.params}")
        arg = dict(zip(self.spec.params, args))
        m = int(arg["m"])
        (grid_x,) = tuple(grid)
        (block_x,) = tuple(block)
        self.launches.append((m, grid_x, block_x))
        arrays = [name for name in ("a", "b", "out", "info") if name in arg]
        if self.spec.rcond:
            arrays.append("rcond")
        elif "rcond" in arg and int(arg["rcond"]) != 0:
            raise AssertionError("the kernel writes no rcond, yet it was given a pointer")
        for name in arrays:
            if not arg[name].flags.c_contiguous:
                raise AssertionError(f"kernel argument {name} is not C-contiguous")
        out, info = arg["out"], arg["info"]
        n = self.spec.n
        want = (m, n, n) if "b" not in arg else (m, n, arg["b"].shape[-1])
        if out.shape != want or info.shape != (m,):
            raise AssertionError(f"kernel launched with m={m} on out {out.shape} and info {info.shape}")
        if self.spec.rcond and arg["rcond"].shape != (m,):
            raise AssertionError(f"kernel launched with m={m} on rcond {arg['rcond'].shape}")
        host_a = np.array(arg["a"], dtype=self.spec.dtype, copy=True).view(np.ndarray)
        host_b = None if "b" not in arg else np.array(arg["b"], dtype=self.spec.dtype, copy=True).view(np.ndarray)
        results = _launch(self.spec, self.exe, host_a, grid_x, block_x, orders=("f",), b=host_b)
        for name, value in zip(("out", "info", "rcond"), results):
            np.copyto(arg[name].view(np.ndarray), value)
