"""Compile every kernel instantiation through NVRTC without a GPU, and read ptxas's report.

``cupy.RawModule.compile()`` asks the device for its architecture, so it
needs a GPU. NVRTC itself does not: given ``-arch=sm_XX`` it compiles to a
cubin for that architecture on any machine, and with ``-Xptxas=-v`` its log
holds ptxas's register and spill report for every kernel.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from .. import NVRTC_OPTIONS, KernelSpec, instantiations, kernel_source
from .._nvrtc import load_nvrtc as _load_nvrtc
from .sass import kernel_code

__all__ = [
    "ARCHS",
    "KernelReport",
    "NvrtcCompileError",
    "parse_ptxas_report",
    "compile_report",
    "collect_reports",
    "run_check",
    "nvrtc_version",
]

#: A100 and H100: the architectures the project supports and CI checks.
ARCHS = ("sm_80", "sm_90")


@dataclass(frozen=True)
class KernelReport:
    """ptxas's numbers for one kernel on one architecture."""

    spec: KernelSpec
    arch: str
    default: bool
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int
    #: The kernel's machine code (its ELF ``.text`` section), kept for the
    #: cost model (``collect_reports(..., keep_code=True)``), else empty.
    code: bytes = field(default=b"", repr=False, compare=False)

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_report(log: str) -> dict[str, dict[str, int]]:
    """Parse ptxas ``-v`` output into ``{mangled name: numbers}``.

    Each entry has ``registers``, ``spill_stores``, ``spill_loads``,
    ``stack_bytes`` and ``shared_bytes`` (0 where ptxas printed none). Only
    entry functions (kernels) are reported; properties that ptxas prints for
    non-inlined device functions are skipped.
    """
    entries: dict[str, dict[str, int]] = {}
    current_entry: str | None = None
    current_props: str | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current_entry = m.group(1)
            entries.setdefault(
                current_entry,
                {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack_bytes": 0, "shared_bytes": 0},
            )
            current_props = None
        elif m := _PROPS.search(line):
            current_props = m.group(1)
        elif m := _FRAME.search(line):
            if current_props is not None and current_props in entries:
                entry = entries[current_props]
                entry["stack_bytes"] = int(m.group(1))
                entry["spill_stores"] = int(m.group(2))
                entry["spill_loads"] = int(m.group(3))
        elif m := _USED.search(line):
            if current_entry is not None:
                entries[current_entry]["registers"] = int(m.group(1))
                if smem := _SMEM.search(line):
                    entries[current_entry]["shared_bytes"] = int(smem.group(1))
    return entries


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected the kernel source; the message holds its log."""


def nvrtc_version() -> str:
    """The version of the NVRTC that CuPy loads, as "major.minor"."""
    major, minor = _load_nvrtc().getVersion()
    return f"{major}.{minor}"


def compile_report(
    specs: list[KernelSpec], arch: str, defaults: set[KernelSpec], keep_code: bool = False
) -> list[KernelReport]:
    """Compile ``specs`` in one NVRTC program for ``arch`` and report each kernel.

    With ``keep_code``, each report also carries the kernel's machine code
    from the cubin (for the cost model).

    Raises
    ------
    NvrtcCompileError
        With NVRTC's log, if the source does not compile.
    """
    nvrtc = _load_nvrtc()
    prog = nvrtc.createProgram(kernel_source(), "gpuinv_kernels.cu", [], [])
    try:
        for spec in specs:
            nvrtc.addNameExpression(prog, spec.name_expression)
        options = [*NVRTC_OPTIONS, f"-arch={arch}", "-Xptxas=-v"]
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog).rstrip("\x00")
            raise NvrtcCompileError(f"NVRTC failed for {arch}: {exc}\n{log}") from None
        log = nvrtc.getProgramLog(prog).rstrip("\x00")
        parsed = parse_ptxas_report(log)
        cubin = nvrtc.getCUBIN(prog) if keep_code else b""
        reports = []
        for spec in specs:
            mangled = nvrtc.getLoweredName(prog, spec.name_expression)
            if mangled not in parsed:
                raise NvrtcCompileError(f"ptxas printed no report for {spec.name_expression} ({mangled})")
            numbers = parsed[mangled]
            code = kernel_code(cubin, mangled) if keep_code else b""
            reports.append(KernelReport(spec=spec, arch=arch, default=spec in defaults, code=code, **numbers))
        return reports
    finally:
        nvrtc.destroyProgram(prog)


def _compile_job(job: tuple[list[KernelSpec], str, set[KernelSpec], bool]) -> list[KernelReport]:
    return compile_report(*job)


def collect_reports(
    archs: tuple[str, ...] = ARCHS,
    include_non_default: bool = False,
    workers: int | None = None,
    keep_code: bool = False,
    ops: tuple[str, ...] | None = None,
) -> list[KernelReport]:
    """Compile every instantiation for every arch and return ptxas's reports.

    Compiling is slow (the kernels are fully unrolled), so one program per
    (arch, dtype) is compiled in a pool of ``workers`` processes (default:
    the usable CPUs). ``ops`` keeps only the instantiations of those
    :attr:`KernelSpec.op` values (default: all).
    """
    _load_nvrtc()  # fail here, not in a worker, if libnvrtc is missing
    defaults = set(instantiations())
    specs = [s for s in instantiations(include_non_default) if ops is None or s.op in ops]
    # Small jobs, the costliest first, keep every worker busy to the end;
    # each job is one NVRTC program (parsing the source costs well under a
    # second, compiling the big unrolled kernels tens of seconds).
    by_cost = sorted(specs, key=lambda s: s.n * s.n * s.dtype.itemsize, reverse=True)
    chunks = [by_cost[i : i + 4] for i in range(0, len(by_cost), 4)]
    jobs = [(chunk, arch, defaults, keep_code) for chunk in chunks for arch in archs]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= 1:
        results = [_compile_job(job) for job in jobs]
    else:
        # "spawn", not the default fork: the caller may hold threads (a test
        # process with JAX or torch loaded) that a forked child would inherit
        # mid-lock and deadlock on.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            results = list(pool.map(_compile_job, jobs))
    order = {(spec, arch): i for i, (spec, arch) in enumerate((s, a) for a in archs for s in specs)}
    return sorted((r for batch in results for r in batch), key=lambda r: order[(r.spec, r.arch)])


def run_check(
    archs: tuple[str, ...] = ARCHS,
    include_non_default: bool = False,
    out=print,
    workers: int | None = None,
    reports: list[KernelReport] | None = None,
) -> int:
    """Compile and report every instantiation for every arch; return an exit status.

    Prints one line per instantiation and arch. The status is 1 if any
    default-dispatched kernel spills, else 0 (a compile error raises
    :class:`NvrtcCompileError`). ``reports`` from an earlier
    :func:`collect_reports` are checked instead of compiling again.
    """
    start = time.perf_counter()
    if reports is None:
        reports = collect_reports(archs, include_non_default, workers)
        out(f"# {len(reports)} kernels compiled for {', '.join(archs)} in {time.perf_counter() - start:.0f} s")
    specs = {r.spec for r in reports}
    failed = []
    for r in reports:
        flag = "" if r.default else "  (not dispatched)"
        if r.spills and r.default:
            flag = "  SPILL"
            failed.append(r)
        elif r.spills:
            flag += " spill"
        out(
            f"{r.arch}  {r.spec.label()} regs={r.registers:<3} spill_stores={r.spill_stores:<5} "
            f"spill_loads={r.spill_loads:<5} stack={r.stack_bytes:<5} smem={r.spec.shared_bytes}{flag}"
        )
    if failed:
        out(f"FAILED: {len(failed)} default-dispatched kernels spill registers")
        return 1
    out(f"OK: {len(specs)} instantiations x {len(archs)} archs, no spills in dispatched kernels")
    return 0
