"""Run gpuinv's CUDA kernels on the CPU: build emulation executables and launch them.

``tests/cuda_emu/cuda_emu.h`` emulates the CUDA that the kernels use (one
fiber per CUDA thread, block barriers, lockstep warp collectives with CUDA's
width rules, ``__shared__`` memory bounded by AddressSanitizer and poisoned
with NaN before each block). g++ builds, under AddressSanitizer and UBSan,
one executable per group of :class:`gpuinv.kernels.KernelSpec` (a few to
sixteen instantiations of one family and dtype), from three objects:

- the runtime (``emu_main.cpp``: argument parsing, exact-size buffers, the
  thread orders and their comparison), which does not include kernels.cu and
  is built once;
- a generated unit that includes kernels.cu (unchanged, or a mutated copy)
  once per instantiation, each time inside a namespace of its own, so that
  each instantiation's ``__shared__`` arrays (``extern`` declarations under
  the emulation) are distinct globals, and lists the instantiations in
  ``emu_kernels`` (``emu_table.h``);
- a generated unit that defines those arrays, each of exactly its
  instantiation's shared size, so AddressSanitizer's redzone follows it.

The executable runs the instantiation named on its command line.
:func:`run` launches it with the grid and block that
:func:`gpuinv.kernels.launch_config` computes for the real launch, on
exact-size heap buffers, once per thread order (forward, reverse, shuffled);
it fails unless every order gives the same bits and the input is left
unwritten.

Builds are cached by content in ``$GPUINV_EMU_CACHE`` or
``<repo>/build/cuda_emu``: the key of an object is the hash of every file it
includes, the generated text, the flags and the compiler's version, so an
unchanged kernel is never rebuilt and a change to kernels.cu rebuilds the
kernels' objects but not the runtime. :func:`build_all` builds the groups in
parallel, one g++ per core.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import gpuinv.kernels as kernels

REPO = Path(__file__).resolve().parent.parent
EMU_DIR = Path(__file__).resolve().parent / "cuda_emu"
KERNEL_DIR = Path(kernels.__file__).resolve().parent
GXX = shutil.which("g++")

# -O0: the builds take half the time of -O1 (1.5 s against 3.1 s of CPU for
# the runtime, measured with /usr/bin/time on g++ 12), and the emulated
# launches are dominated by the fiber switches and the sanitizers' checks,
# not by the kernels' arithmetic. -ffp-contract=off gives the same
# arithmetic as the host build of the kernels' math
# (tests/test_kernels_host.py), so results can be compared bit for bit.
OPT = os.environ.get("GPUINV_EMU_OPT", "-O0")
CXXFLAGS = (
    "-std=c++20", OPT, "-g", "-fno-omit-frame-pointer", "-ffp-contract=off",
    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
    "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-variable",
)  # fmt: skip

#: Instantiations per executable at most: larger groups are split, so that
#: the cores share the work of a family (one g++ per group).
GROUP_SIZE = 16

#: Thread orders of every launch: forward, reverse and a shuffled order that
#: is drawn anew at every round of the scheduler.
DEFAULT_ORDERS = ("f", "r", "s1")

SANITIZER_ENV = {
    "ASAN_OPTIONS": "halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=0:abort_on_error=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}

_SHARED_DECL = re.compile(r"__shared__\s+[\w:<>, ]+?\s+(\w+)\s*\[")
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


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


@functools.lru_cache(maxsize=None)
def compiler_version() -> str:
    """What identifies the compiler in the cache keys: its path and its full version text."""
    out = subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout
    return f"{GXX}\n{out}"


def cache_dir() -> Path:
    path = Path(os.environ.get("GPUINV_EMU_CACHE") or REPO / "build" / "cuda_emu")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_names(source: str) -> list[str]:
    """The names of the ``__shared__`` arrays declared in ``source``."""
    return sorted(set(_SHARED_DECL.findall(source)))


def element_type(spec: kernels.KernelSpec) -> str:
    return kernels._CXX_TYPES[spec.dtype]


def kernel_headers(source: str) -> list[str]:
    """The package headers that ``source`` (a kernels.cu) includes, in order, and
    the ones they include in turn: every one is in the key of what includes it."""
    seen: list[str] = []
    todo = _LOCAL_INCLUDE.findall(source)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        path = KERNEL_DIR / name
        if not path.exists():
            raise RuntimeError(f"kernels.cu includes {name}, which is not in {KERNEL_DIR}")
        seen.append(name)
        todo += _LOCAL_INCLUDE.findall(path.read_text())
    return seen


@dataclass(frozen=True)
class Program:
    """One kernel of an emulation executable: the executable, and the kernel's entry in it."""

    exe: Path
    index: int
    name: str


@dataclass(frozen=True)
class Unit:
    """One instantiation to build: ``spec`` compiled from the kernels.cu text ``source``."""

    spec: kernels.KernelSpec
    source: str

    @property
    def source_key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _compile(cmd: list[str], out: Path, what: str) -> None:
    """Run g++ into a temporary name and rename it into place (atomic for concurrent builds)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    result = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"g++ failed to build {what}:\n{result.stderr[-6000:]}")
    os.replace(tmp, out)


def _runtime_object() -> Path:
    """emu_main.cpp's object: depends on the emulation headers only, never on kernels.cu."""
    sources = [EMU_DIR / "cuda_emu.h", EMU_DIR / "emu_table.h", EMU_DIR / "emu_main.cpp"]
    key = _digest(compiler_version(), *CXXFLAGS, *(p.read_bytes() for p in sources))
    obj = cache_dir() / f"runtime-{key}.o"
    if not obj.exists():
        _compile([GXX, *CXXFLAGS, f"-I{EMU_DIR}", "-c", str(EMU_DIR / "emu_main.cpp")], obj, "the emulation runtime")
    return obj


def _group_sources(units: Sequence[Unit]) -> tuple[str, str]:
    """The generated text of a group's kernel unit and of its shared-memory unit."""
    headers = kernel_headers(units[0].source)
    kernel_lines = [
        "// Generated by tests/_cuda_emu.py: one namespace per instantiation (emu_table.h).",
        '#include "cuda_emu.h"',
        '#include "emu_table.h"',
        # The headers first, at global scope: their #pragma once keeps kernels.cu's
        # own #include lines from pasting them into the namespaces below.
        *(f'#include "{h}"' for h in headers),
    ]
    shared_lines = ["// Generated by tests/_cuda_emu.py: the shared arrays of each instantiation.", "#include <cstddef>"]
    entries = []
    for i, unit in enumerate(units):
        spec, ns = unit.spec, f"emu_k{i}"
        names = shared_names(unit.source)
        if not names:
            raise RuntimeError("kernels.cu declares no __shared__ array; update tests/_cuda_emu.py")
        if kernel_headers(unit.source) != headers:
            raise RuntimeError("the kernels.cu texts of one group must include the same headers")
        kernel_lines += [
            f"namespace {ns} {{",
            "namespace gpuinv { using namespace ::gpuinv; }",
            f'#include "src/kernels-{unit.source_key}.cu"',
            "}",
            f'extern "C" unsigned char* {ns}_shared[];',
        ]
        # A kernel without a stage still declares the array: one byte it never touches.
        size = max(spec.shared_bytes, 1)
        shared_lines.append(f"namespace {ns} {{ namespace gpuinv {{ "
                            + " ".join(f"alignas(128) unsigned char {n}[{size}];" for n in names) + " } }")
        shared_lines.append(f'extern "C" unsigned char* {ns}_shared[] = {{'
                            + "".join(f"{ns}::gpuinv::{n}, " for n in names) + "nullptr};")
        cxx = element_type(spec)
        cast = {"a": f"static_cast<const {cxx}*>(g.a)", "b": f"static_cast<const {cxx}*>(g.b)",
                "out": f"static_cast<{cxx}*>(g.out)", "info": "g.info",
                "rcond": f"static_cast<gpuinv::real_of<{cxx}>::type*>(g.rcond)", "m": "g.m", "k": "g.k"}  # fmt: skip
        call = f"{ns}::{spec.name_expression}({', '.join(cast[p] for p in spec.params)})"
        entries.append(f'    {{"{spec.name_expression}", [](const EmuArgs& g) {{ {call}; }}, {ns}_shared, {size}, '
                       f"sizeof({cxx}), sizeof(gpuinv::real_of<{cxx}>::type)}},")
    kernel_lines += ['extern "C" const EmuKernel emu_kernels[] = {', *entries, "};",
                     f'extern "C" const int emu_kernel_count = {len(units)};', ""]  # fmt: skip
    return "\n".join(kernel_lines), "\n".join(shared_lines) + "\n"


def _group_plan(units: Sequence[Unit], label: str) -> tuple[str, str, Path]:
    """A group's generated texts and its executable's path in the cache (whose key
    covers every file the group includes, the generated texts, the flags and the compiler)."""
    kernel_text, shared_text = _group_sources(units)
    headers = kernel_headers(units[0].source)
    key = _digest(compiler_version(), *CXXFLAGS, kernel_text, shared_text,
                  *((EMU_DIR / f).read_bytes() for f in ("cuda_emu.h", "emu_table.h")),
                  *((KERNEL_DIR / h).read_bytes() for h in headers), *(u.source for u in units))  # fmt: skip
    return kernel_text, shared_text, cache_dir() / f"emu-{label}-{key}"


def build_group(units: Sequence[Unit], label: str = "group") -> Path:
    """Build (or find in the cache) the executable of ``units`` and return its path.

    Its kernel ``i`` is ``units[i]``. Blocks on the runtime object, which it
    builds first if it is missing.
    """
    units = list(units)
    cache = cache_dir()
    kernel_text, shared_text, exe = _group_plan(units, label)
    if exe.exists():
        return exe
    runtime = _runtime_object()
    src_dir = cache / "src"
    src_dir.mkdir(exist_ok=True)
    for unit in units:
        path = src_dir / f"kernels-{unit.source_key}.cu"
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=src_dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(unit.source)
            os.replace(tmp, path)
    names = ", ".join(u.spec.name_expression for u in units)
    include = [f"-I{EMU_DIR}", f"-I{KERNEL_DIR}", f"-I{cache}"]
    # A folder of its own: two test runs may build the same group at once.
    with tempfile.TemporaryDirectory(dir=cache, prefix=f"work-{label}-") as tmp:
        kernel_cpp, shared_cpp = Path(tmp) / f"{label}.cpp", Path(tmp) / f"{label}-shared.cpp"
        kernel_cpp.write_text(kernel_text)
        shared_cpp.write_text(shared_text)
        kernel_o, shared_o = Path(tmp) / f"{label}.o", Path(tmp) / f"{label}-shared.o"
        _compile([GXX, *CXXFLAGS, *include, "-c", str(kernel_cpp)], kernel_o, f"the emulation of {names}")
        _compile([GXX, *CXXFLAGS, "-c", str(shared_cpp)], shared_o, f"the shared arrays of {names}")
        _compile([GXX, *CXXFLAGS, str(runtime), str(kernel_o), str(shared_o)], exe, f"the executable of {names}")
    return exe


def _kernel_source(kernel_dir: Path | None = None) -> str:
    return (Path(kernel_dir or KERNEL_DIR) / "kernels.cu").read_text()


def _family(spec: kernels.KernelSpec) -> str:
    """The family a spec's canonical group belongs to: its template (LU, Cholesky, ...)."""
    return {"tril": "tri", "triu": "tri"}.get(spec.op, spec.op)


@functools.lru_cache(maxsize=None)
def canonical_groups() -> dict[kernels.KernelSpec, tuple[str, tuple[kernels.KernelSpec, ...]]]:
    """Each dispatched instantiation's group: its family and dtype, split into the
    sample (:func:`sample`) and the rest, and each part into runs of at most
    :data:`GROUP_SIZE` in :func:`gpuinv.kernels.instantiations` order. A group's
    composition depends on nothing but the kernels' tables, so the executable
    built for one test run is found in the cache by the next, whatever it selects."""
    chosen = set(sample())
    parts: dict[tuple[str, str, str], list[kernels.KernelSpec]] = {}
    for spec in kernels.instantiations():
        part = "sample" if spec in chosen else "rest"
        parts.setdefault((_family(spec), spec.dtype.name, part), []).append(spec)
    groups = {}
    for (family, dtype, part), specs in parts.items():
        for start in range(0, len(specs), GROUP_SIZE):
            chunk = tuple(specs[start:start + GROUP_SIZE])
            label = f"{family}-{dtype}-{part}{start // GROUP_SIZE}"
            for spec in chunk:
                groups[spec] = (label, chunk)
    return groups


def _edges(n_max: int, thread_max: int | None, direct_max: int) -> set[int]:
    """The n at the edges of one kernel's bounds: 1, the last stage-less n and the
    first staged one, the last one-thread n and the first lane-group one, the largest."""
    ns = {1, direct_max, direct_max + 1, n_max}
    if thread_max is not None:
        ns |= {thread_max, thread_max + 1}
    return {n for n in ns if 1 <= n <= n_max}


@functools.lru_cache(maxsize=None)
def sample() -> tuple[kernels.KernelSpec, ...]:
    """The representative sample that the default test run emulates.

    Every family (each op of :func:`gpuinv.kernels.instantiations`), every
    dtype, both shapes, at the edges of every bound: n = 1, the largest n
    that skips the shared-memory stage (``THREAD_DIRECT_BYTES``) and the
    next, ``THREAD_MAX_N`` and ``THREAD_MAX_N + 1`` (the switch from one
    thread to a lane group per matrix), and the family's largest n; the rcond
    variants at the same n where they exist. ``--emu-all`` (tests/conftest.py)
    emulates every instantiation.
    """
    specs = kernels.instantiations()
    top: dict[tuple[str, np.dtype], int] = {}
    for s in specs:
        top[s.op, s.dtype] = max(top.get((s.op, s.dtype), 0), s.n)
    chosen = []
    for s in specs:
        direct_max = max(n for n in range(1, 9) if n * n * s.dtype.itemsize <= kernels.THREAD_DIRECT_BYTES)
        thread_max = kernels.THREAD_MAX_N[s.dtype] if s.op == "inv" else None
        if s.n in _edges(top[s.op, s.dtype], thread_max, direct_max):
            chosen.append(s)
    return tuple(chosen)


def build_all(specs: Iterable[kernels.KernelSpec], jobs: int | None = None) -> dict[kernels.KernelSpec, Program]:
    """Build the canonical groups (:func:`canonical_groups`) that hold ``specs``, in
    parallel (one g++ per core), and return each spec's :class:`Program`.

    A spec outside the dispatched instantiations is built in a group of its own.
    """
    source = _kernel_source()
    groups: dict[str, tuple[kernels.KernelSpec, ...]] = {}
    for spec in specs:
        label, members = canonical_groups().get(spec, (f"{_family(spec)}-{spec.dtype.name}-n{spec.n}-{spec.kind}", (spec,)))
        groups[label] = members
    exes = build_units({label: [Unit(s, source) for s in members] for label, members in groups.items()}, jobs)
    return {s: Program(exes[label], i, s.name_expression) for label, members in groups.items() for i, s in enumerate(members)}


def build_units(groups: dict[str, Sequence[Unit]], jobs: int | None = None) -> dict[str, Path]:
    """Build each labelled group of units into one executable, in parallel; the largest first."""
    jobs = jobs or max(1, len(os.sched_getaffinity(0)))
    if not groups:
        return {}
    _runtime_object()  # once, before the groups that all link it
    order = sorted(groups, key=lambda label: -len(groups[label]))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures: dict[str, Future] = {label: pool.submit(build_group, groups[label], label) for label in order}
        return {label: f.result() for label, f in futures.items()}


def build(spec: kernels.KernelSpec, kernel_dir: Path | None = None) -> Program:
    """Build ``spec``'s emulation (cached) and return its :class:`Program`.

    ``kernel_dir`` holds the ``kernels.cu`` to compile (default: the
    package's own; the headers always come from the package). With the
    package's own, the spec's whole canonical group is built: it costs
    little more than the spec alone (the headers dominate: 1.75 s of CPU for
    a group of 16 LU instantiations against 0.96 s for one of them, at -O0),
    and the emulation tests and the other fake-CuPy tests find it in the cache.
    """
    source = _kernel_source(kernel_dir)
    if kernel_dir is None and spec in canonical_groups():
        label, members = canonical_groups()[spec]
        return Program(build_group([Unit(s, source) for s in members], label), members.index(spec), spec.name_expression)
    label = f"{_family(spec)}-{spec.dtype.name}-n{spec.n}-{spec.kind}"
    return Program(build_group([Unit(spec, source)], label), 0, spec.name_expression)


def real_dtype(spec: kernels.KernelSpec) -> np.dtype:
    return np.dtype(spec.dtype.char.lower()) if spec.dtype.kind == "c" else spec.dtype


def run(
    spec: kernels.KernelSpec,
    a: np.ndarray,
    *,
    b: np.ndarray | None = None,
    max_blocks: int | None = None,
    orders: Iterable[str] = DEFAULT_ORDERS,
    exe: Program | None = None,
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
        cmd = [str(exe.exe), str(exe.index), exe.name, str(m), str(k), str(grid), str(block), ",".join(orders),
               str(paths["a"]), b_arg, str(paths["out"]), str(paths["info"]), rcond_arg]  # fmt: skip
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
        self.exe = build(spec)  # its canonical group where that is built, else it alone
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
