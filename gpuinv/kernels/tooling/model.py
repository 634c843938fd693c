"""A cost model of every dispatched kernel, read from its compiled SASS, and the CI budget.

``python -m gpuinv.kernels --model`` compiles every instantiation through
NVRTC (the same compile as ``--check``), disassembles each kernel
(``sass.py``), counts the warp-instructions one matrix costs on the main
path, and turns the counts into upper bounds on matrices per second for
each chip that runs the architecture. docs/kernels.md ("Cost model") has
the method, the numbers and the limits. No GPU is needed, and nothing here
runs when the library inverts matrices.

``--budget`` compares the numbers with the committed baseline
(benchmarks/kernel_budget.json) and fails when any gets worse by more than
5%; ``--update-budget REASON`` rewrites the baseline with a one-line reason.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import KernelSpec
from .check import KernelReport
from .sass import CLASSES, count_main_path, disassemble, parse_sass

__all__ = [
    "CHIPS",
    "ARCH_CHIPS",
    "Chip",
    "occupancy",
    "staging_trips",
    "model_kernel",
    "model_reports",
    "format_table",
    "budget_numbers",
    "check_budget",
    "update_budget",
    "BUDGET_METRICS",
    "BUDGET_TOLERANCE",
]


@dataclass(frozen=True)
class Chip:
    """The per-SM limits and rates the model uses (datasheet and programming-guide figures).

    Rates are per SM per clock: ``fp32``, ``fp64``, ``xu`` (MUFU) and
    ``shuffle`` in lane results (a warp-instruction takes 32), ``issue`` in
    warp-instructions (one scheduler per SM sub-partition, four per SM),
    ``shared`` in 128-byte wavefronts.
    """

    name: str
    arch: str
    sms: int
    clock_hz: float
    hbm_bytes_per_s: float
    latency_s: float  # loaded DRAM latency assumed for Little's law (a lead to measure)
    fp32: int
    fp64: int
    xu: int = 16
    shuffle: int = 32
    issue: int = 4
    shared: int = 1
    regs_per_sm: int = 65536
    reg_unit: int = 256  # registers are allocated per warp in units of 256
    sub_partitions: int = 4
    max_warps: int = 64
    max_blocks: int = 32
    smem_per_sm: int = 0
    smem_reserved_per_block: int = 1024
    smem_unit: int = 128


# A100 SXM4 80 GB: 108 SMs, 1.41 GHz boost, 2.039 TB/s; 64 FP32 and 32 FP64
# lanes per SM (19.5 / 9.7 TFLOP/s); 164 KiB of shared memory per SM.
# H100 SXM5: 132 SMs, 1.98 GHz boost, 3.35 TB/s; 128 FP32 and 64 FP64 lanes
# per SM (67 / 34 TFLOP/s); 228 KiB of shared memory per SM.
# H200 SXM: the H100's processor with 4.8 TB/s of HBM3e.
# Shuffle: 32 results per clock per SM, MUFU 16 (CUDA C++ Programming Guide,
# throughput of native arithmetic instructions, compute capability 8.0, 9.0).
# Latency: unloaded DRAM latency is about 450-500 core clocks in published
# microbenchmarks of both chips (250-350 ns); it grows near peak bandwidth,
# so 600 ns is assumed: a lead for the first lease to measure.
CHIPS = {
    "A100": Chip("A100", "sm_80", 108, 1.41e9, 2.039e12, 600e-9, fp32=64, fp64=32, smem_per_sm=167936),
    "H100": Chip("H100", "sm_90", 132, 1.98e9, 3.35e12, 600e-9, fp32=128, fp64=64, smem_per_sm=233472),
    "H200": Chip("H200", "sm_90", 132, 1.98e9, 4.8e12, 600e-9, fp32=128, fp64=64, smem_per_sm=233472),
}

#: The chips each architecture's cubin runs on; the first gives the ceiling.
ARCH_CHIPS = {"sm_80": ("A100",), "sm_90": ("H200", "H100")}


def occupancy(registers: int, threads: int, shared_bytes: int, chip: Chip) -> tuple[int, str]:
    """Resident warps per SM, and what limits them ("registers", "shared", "warps", "blocks").

    The CUDA occupancy calculator's rules: a warp's registers are rounded up
    to the allocation unit and allocated within one of the SM's four
    sub-partitions (a quarter of the register file each); a block's shared
    memory plus the 1 KiB the driver reserves per block is rounded up to
    128 bytes.
    """
    warps_per_block = -(-threads // 32)
    limits = {"warps": chip.max_warps // warps_per_block, "blocks": chip.max_blocks}
    if registers > 0:
        per_warp = -(-registers * 32 // chip.reg_unit) * chip.reg_unit
        warps = (chip.regs_per_sm // chip.sub_partitions // per_warp) * chip.sub_partitions
        limits["registers"] = warps // warps_per_block
    smem = shared_bytes + chip.smem_reserved_per_block
    smem = -(-smem // chip.smem_unit) * chip.smem_unit
    limits["shared"] = chip.smem_per_sm // smem
    # Ties name the first: registers, then shared memory, then the fixed caps.
    order = ("registers", "shared", "warps", "blocks")
    blocks = min(limits.values())
    limiter = next(k for k in order if limits.get(k) == blocks)
    return blocks * warps_per_block, limiter


def staging_trips(spec: KernelSpec) -> tuple[int, int]:
    """Source iterations per lane of a staging loop for a full tile: (most, fewest) over lanes.

    Thread kernel: ``for (g = t; g < count * NN; g += B)`` with ``count = B``
    runs ``NN`` times in every thread. Group kernel: ``for (g = lane; g <
    MPW * NN; g += 32)`` runs ``ceil(MPW * NN / 32)`` times in lane 0 and
    ``floor(MPW * NN / 32)`` in lane 31. The one-thread kernels' staging
    loops are unrolled (the solve kernel's b stage of N trips too), so these
    counts only matter where one stays rolled (tests/test_kernels_model.py
    checks that none does).
    """
    nn = spec.n * spec.n
    if spec.shape == "thread":
        return nn, nn
    total = (32 // spec.group) * nn
    return -(-total // 32), total // 32


def compute_trips(spec: KernelSpec) -> int | None:
    """Trips of the rolled loops without global accesses: the group kernel's k loop runs N times."""
    return spec.n if spec.shape == "group" else None


def matrices_per_warp(spec: KernelSpec) -> int:
    """Matrices one warp inverts per trip of the tile loop."""
    if spec.shape == "thread":
        return 32 * (spec.per_block // spec.block)  # the stage-less kernel: several a thread
    return 32 // spec.group


def rhs_trips(spec: KernelSpec) -> int | None:
    """The solve kernel's right-hand-side loop trips in the modelled case, k = 1: the
    staged kernels solve k = 1 outside the loop (0 trips), the stage-less ones in it (1)."""
    if spec.op != "solve":
        return None
    return 1 if spec.direct else 0


def bytes_per_matrix(spec: KernelSpec) -> int:
    """Device-memory bytes one matrix needs at least: read once, write once, one
    info word, and one real rcond for the rcond variants.

    The solve reads A and b and writes x: with k right-hand sides (n^2 + 2 n k)
    elements; the model takes k = 1.
    """
    n, item = spec.n, spec.dtype.itemsize
    if spec.op == "solve":
        return (n * n + 2 * n) * item + 4
    rcond = item // (2 if spec.dtype.kind == "c" else 1) if spec.rcond else 0
    return 2 * n * n * item + 4 + rcond


def _bound(rate_per_s: float, per_matrix: float) -> float | None:
    return rate_per_s / per_matrix if per_matrix > 0 else None


def model_kernel(report: KernelReport, sass: str) -> dict:
    """The model's record for one compiled kernel (the JSON's keys; docs/kernels.md)."""
    spec = report.spec
    path = count_main_path(parse_sass(sass), *staging_trips(spec), compute_trips=compute_trips(spec),
                           rhs_trips=rhs_trips(spec))
    mpw = matrices_per_warp(spec)
    per_trip = path.weighted()
    wipm = per_trip / mpw
    mix = {k: v / mpw for k, v in path.mix().items()}
    pipes = {k: v / mpw for k, v in path.pipes().items()}
    in_flight = path.global_bytes_in_flight()
    bpm = bytes_per_matrix(spec)
    bounds = {}
    occ = {}
    for name in ARCH_CHIPS[report.arch]:
        chip = CHIPS[name]
        warps, occ_limiter = occupancy(report.registers, spec.block, report.shared_bytes or spec.shared_bytes, chip)
        occ[name] = (warps, occ_limiter)
        clocks = chip.sms * chip.clock_hz
        fp_bounds = [
            b
            for b in (
                _bound(clocks * chip.fp32 / 32, pipes["fp32"]),
                _bound(clocks * chip.fp64 / 32, pipes["fp64"]),
                _bound(clocks * chip.xu / 32, pipes["xu"]),
            )
            if b is not None
        ]
        bounds[name] = {
            "issue": _bound(clocks * chip.issue, wipm),
            "fp": min(fp_bounds) if fp_bounds else None,
            "shuffle": _bound(clocks * chip.shuffle / 32, pipes["shuffle"]),
            "shared": _bound(clocks * chip.shared, pipes["shared"]),
            "hbm": chip.hbm_bytes_per_s / bpm,
            # Little's law: at most `warps * in_flight` bytes per SM are on
            # their way from memory at once, each for `latency` seconds.
            "hbm_occupancy": chip.sms * warps * in_flight / chip.latency_s / bpm,
        }
    chip0 = ARCH_CHIPS[report.arch][0]
    finite = {k: v for k, v in bounds[chip0].items() if v is not None}
    limiter = min(finite, key=finite.get)
    ceiling = finite[limiter]
    return {
        "dtype": spec.dtype.name,
        "n": spec.n,
        "shape": spec.shape,
        "op": spec.op,
        "kind": spec.kind,
        "block": spec.block,
        "group": spec.group,
        "matrices_per_block": spec.per_block,
        "arch": report.arch,
        "dispatched": report.default,
        "registers": report.registers,
        "spill_bytes": report.spill_stores + report.spill_loads,
        "stack_bytes": report.stack_bytes,
        "shared_bytes": report.shared_bytes or spec.shared_bytes,
        "occupancy_warps": occ[chip0][0],
        "occupancy_limiter": occ[chip0][1],
        "main_path_instructions": len(path.instructions),
        "main_path_bytes": path.bytes,
        "kernel_bytes": path.kernel_bytes,
        "staging_loops": [
            {"unroll": lp.unroll, "body_trips": lp.trips, "body_instructions": lp.body_instructions}
            for lp in path.loops
            if lp.unroll > 0 and not lp.rhs
        ],
        "compute_loops": [
            {"trips": lp.trips, "body_instructions": lp.body_instructions}
            for lp in path.loops
            if lp.unroll == 0 and lp.trips > 0
        ],
        **({"rhs_loops": [{"trips": lp.trips, "body_instructions": lp.body_instructions}
                          for lp in path.loops if lp.rhs]} if spec.op == "solve" else {}),
        "unknown_loops": path.unknown_loops,
        "slow_path_call_instructions": len(path.rare),
        "warp_instructions_per_matrix": round(wipm, 2),
        "mix": {k: round(mix[k], 2) for k in CLASSES},
        "pipes": {k: round(v, 2) for k, v in pipes.items()},
        "bytes_per_matrix": bpm,
        "bytes_in_flight_per_warp": in_flight,
        "bounds": {c: {k: (None if v is None else float(f"{v:.4g}")) for k, v in b.items()} for c, b in bounds.items()},
        "ceiling_chip": chip0,
        "ceiling_matrices_per_s": float(f"{ceiling:.4g}"),
        "hbm_share_ceiling": round(ceiling / bounds[chip0]["hbm"], 3),
        "limiter": limiter,
    }


def model_reports(reports: list[KernelReport], workers: int | None = None) -> list[dict]:
    """Disassemble each report's code (``collect_reports(..., keep_code=True)``) and model it."""
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def one(report: KernelReport) -> dict:
        if not report.code:
            raise ValueError(f"no code kept for {report.spec.label()} {report.arch}")
        return model_kernel(report, disassemble(report.code, report.arch))

    # nvdisasm is a subprocess: threads are enough to keep every core busy.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, reports))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def format_table(records: list[dict]) -> list[str]:
    """The model as text lines, one per instantiation."""
    lines = [
        f"{'arch':<5} {'dtype':<10} {'n':>2} {'shape':<11} {'regs':>4} {'warps':>5} {'main KB':>7} "
        f"{'kernel KB':>9} {'wi/mat':>8} {'fp':>6} {'shfl':>6} {'shm':>6} {'glob':>5} {'sel/mv':>7} "
        f"{'int':>6} {'ctl':>5} {'ceiling/s':>9} {'HBM share':>9}  limiter"
    ]
    for r in records:
        m = r["mix"]
        lines.append(
            f"{r['arch']:<5} {r['dtype']:<10} {r['n']:>2} {r.get('kind', r['shape']):<11} {r['registers']:>4} "
            f"{r['occupancy_warps']:>5} {r['main_path_bytes'] / 1024:>7.1f} {r['kernel_bytes'] / 1024:>9.1f} "
            f"{r['warp_instructions_per_matrix']:>8.1f} {m['fp']:>6.1f} {m['shuffle']:>6.1f} {m['shared']:>6.1f} "
            f"{m['global']:>5.1f} {m['select_move']:>7.1f} {m['integer']:>6.1f} {m['control']:>5.1f} "
            f"{_fmt(r['ceiling_matrices_per_s']):>9} {r['hbm_share_ceiling']:>9.2f}  {r['limiter']}"
            + ("" if r.get("dispatched", True) else "  (not dispatched)")
        )
    return lines


def write_json(records: list[dict], path: Path, arch: str, nvrtc_version: str) -> None:
    chips = {name: CHIPS[name].__dict__ for name in ARCH_CHIPS[arch]}
    doc = {
        "arch": arch,
        "nvrtc": nvrtc_version,
        "method": "docs/kernels.md, 'Cost model'",
        "chips": chips,
        "kernels": [r for r in records if r["arch"] == arch],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


# --- the budget -------------------------------------------------------------------

#: The per-instantiation numbers CI guards; larger is worse for every one.
BUDGET_METRICS = ("warp_instructions_per_matrix", "main_path_bytes", "registers", "spill_bytes")
#: A number may grow by this share before the check fails.
BUDGET_TOLERANCE = 0.05


def _key(r: dict) -> str:
    # "thread"/"group" for the general inverse, "chol-thread", "tril-thread", "triu-thread"
    # and "diag-thread" for the structured kernels, "solve-thread" for the LU solve kernel.
    return f"{r['arch']} {r['dtype']} n={r['n']} {r.get('kind', r['shape'])}"


def budget_numbers(records: list[dict]) -> dict[str, dict[str, float]]:
    """``{"sm_90 float64 n=16 group": {metric: value}}`` for the dispatched kernels."""
    return {_key(r): {m: r[m] for m in BUDGET_METRICS} for r in records if r.get("dispatched", True)}


def _digest(kernels: dict) -> str:
    return hashlib.sha256(json.dumps(kernels, sort_keys=True).encode()).hexdigest()


def check_budget(records: list[dict], baseline_path: Path, nvrtc_version: str) -> tuple[bool, list[str]]:
    """Compare the model with the baseline; return (ok, lines to print).

    Fails when a metric of a dispatched kernel exceeds its baseline by more
    than :data:`BUDGET_TOLERANCE` (any spill where the baseline has none),
    when a dispatched kernel has no baseline entry, or when the baseline's
    numbers do not match the digest written by ``--update-budget`` (hand
    edits without a reason).
    """
    doc = json.loads(baseline_path.read_text())
    base = doc["kernels"]
    lines = []
    ok = True
    updates = doc.get("updates") or []
    if _digest(base) != doc.get("digest") or not updates or not updates[-1].get("reason", "").strip():
        ok = False
        lines.append(
            f"FAILED: {baseline_path} was edited by hand: change it only with "
            "`python -m gpuinv.kernels --update-budget REASON` (one line), in the commit that changes the kernels"
        )
    if doc.get("nvrtc") and doc["nvrtc"] != nvrtc_version:
        lines.append(f"note: the baseline was made with NVRTC {doc['nvrtc']}, this is NVRTC {nvrtc_version}")
    now = budget_numbers(records)
    archs = {r["arch"] for r in records}
    worse = []
    for key, numbers in now.items():
        if key not in base:
            ok = False
            lines.append(f"FAILED: {key} is not in the budget (new instantiation: --update-budget REASON)")
            continue
        for metric, value in numbers.items():
            old = base[key].get(metric)
            if old is None:
                continue
            limit = old * (1 + BUDGET_TOLERANCE)
            if value > limit and not math.isclose(value, limit):
                worse.append(f"  {key}: {metric} {old} -> {value} ({(value / old - 1) * 100 if old else math.inf:+.1f}%)")
    if worse:
        ok = False
        lines.append(f"FAILED: {len(worse)} numbers over the budget (more than {BUDGET_TOLERANCE:.0%} worse):")
        lines.extend(worse)
    gone = [k for k in base if k.split()[0] in archs and k not in now]
    if gone:
        lines.append(f"note: {len(gone)} budget entries no longer dispatched: {', '.join(gone[:5])}")
    better = sum(
        1
        for key, numbers in now.items()
        if key in base and any(v < base[key].get(m, v) * (1 - BUDGET_TOLERANCE) for m, v in numbers.items())
    )
    if ok:
        lines.append(
            f"OK: {len(now)} kernels within {BUDGET_TOLERANCE:.0%} of the budget in {baseline_path.name}"
            + (f" ({better} better by more than that: consider --update-budget)" if better else "")
        )
    return ok, lines


def update_budget(records: list[dict], baseline_path: Path, reason: str, nvrtc_version: str,
                  *, partial: bool = False) -> None:
    """Rewrite the baseline from ``records`` (all archs compiled), appending ``reason``.

    With ``partial``, only the entries of ``records`` are written (added or
    replaced) and every other entry is kept: for new kernels modelled on
    their own (``records`` of one ``KernelSpec.op``, say) without
    recompiling the others.
    """
    reason = reason.strip()
    if not reason or "\n" in reason:
        raise ValueError("the budget's reason must be one non-empty line")
    updates = []
    kernels = {}
    if baseline_path.exists():
        old = json.loads(baseline_path.read_text())
        updates = old.get("updates", [])
        kernels = old.get("kernels", {})
    archs = {r["arch"] for r in records}
    if not partial:
        kernels = {k: v for k, v in kernels.items() if k.split()[0] not in archs}
    kernels.update(budget_numbers(records))
    kernels = dict(sorted(kernels.items(), key=lambda kv: _sort_key(kv[0])))
    updates.append({"date": datetime.date.today().isoformat(), "reason": reason})
    doc = {
        "about": "per-kernel cost budget checked by `python -m gpuinv.kernels --budget` (docs/kernels.md); "
        "a number may grow by at most the tolerance; change only with --update-budget REASON",
        "tolerance": BUDGET_TOLERANCE,
        "nvrtc": nvrtc_version,
        "updates": updates,
        "digest": _digest(kernels),
        "kernels": kernels,
    }
    baseline_path.write_text(json.dumps(doc, indent=1) + "\n")


def _sort_key(key: str):
    arch, dtype, n, shape = key.split()
    order = ("float32", "float64", "complex64", "complex128")
    return (arch, order.index(dtype) if dtype in order else 9, int(n[2:]), shape)
