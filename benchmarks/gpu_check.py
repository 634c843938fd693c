#!/usr/bin/env python3
"""The GPU check: test and measure gpuinv on a machine with a GPU, in one or two calls.

    GPUINV_COMMIT=<sha> PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --section tests --out DIR
    GPUINV_COMMIT=<sha> PYTHONPATH=$PWD python3 benchmarks/gpu_check.py --section bench --out DIR

Each section fits one 10-minute device call with margin (``--budget``, default
330 s each; docs/cuda.md has the exact commands). ``--section all`` runs both
in one process. Outputs in ``--out`` (see docs/cuda.md and ../shared/GPU.md):

* ``machine.json``: nvidia-smi, GPU, driver, CuPy/CUDA/NumPy/torch/JAX
  versions, the commit measured (``--commit`` or ``GPUINV_COMMIT``: the
  device gets the working tree without ``.git``);
* tests section: ``pytest-gpu.log`` (``pytest -v --tb=short -m gpu``, with
  pytest-xdist where installed), ``tests.json`` and ``tests.md`` (summary,
  failures, the kernel warm-up), ``gpu_check-tests.log`` (this script's own log);
* bench section: ``results.json`` (every raw timing), ``results.md`` (per
  case matrices/s, fraction of the measured floor, the cost model's ceiling,
  ratio to each peer), ``gpu_check-bench.log``.

The JSON and markdown files are rewritten after every step, so a run cut
short (time out, a sticky CUDA error, a kill) still leaves valid files with
what was measured, and each skipped case is listed with its reason.

Tests: the kernel cache is filled first, in parallel (``gpuinv.kernels.warm_up``:
a spawn pool compiling through the engine's own path), so the tests only load
binaries. Pytest runs as a child in its own session; at the deadline it gets
SIGINT, so that it prints its failures and summary, and only then is killed.

Benchmarks, in order of what they decide: first n = 2, 4, 8, 16, 32 in float64
and float32 on CuPy input against ``cupy.linalg.inv``, ``torch.linalg.inv_ex``
and cuBLAS ``<t>matinvBatched`` (called through ctypes; n < 32); then the
crossovers that set thresholds (kernel vs cuBLAS: ``KERNEL_MAX_N``; thread vs
group shape: ``THREAD_MAX_N``; NumPy input on CPU vs GPU: ``cuda_min_bytes``;
cuBLAS vs cuSOLVER: ``CUDA_CUSOLVER_MIN_N``); then the other sizes, complex,
NumPy input and JAX. Peers run in calls of at most 65535 matrices (cuBLAS's
batch limit, which ``cupy.linalg.inv`` does not split), each peer's failure is
recorded without stopping the others, and a failure that leaves the CUDA
context unusable (a sticky error) ends the section with what was measured.
Timing: CUDA events on the current stream (wall clock for JAX and NumPy), after
a warm-up call, median of the repeats, random well-conditioned matrices
(Gaussian plus n on the diagonal), batches of about 256 MB.
"""

from __future__ import annotations

import os

# Before anything can import JAX or start a child: JAX's GPU backend would
# otherwise take 75% of the device's memory at start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("tests", "bench")
BUDGET = {"tests": 330.0, "bench": 330.0}
QUICK_BUDGET = {"tests": 240.0, "bench": 180.0}
RESERVE_S = 12.0  # kept back at the end of a section for writing results
PYTEST_GRACE_S = 25.0  # after SIGINT, for pytest to print failures and its summary

# The sizes that set the kernel thresholds, timed first.
THRESHOLD_N = (2, 4, 8, 16, 32)
SIZES = [2, 3, 4, 5, 8, 16, 32, 64, 128, 256, 512]
# n = 28: complex128 goes to cuBLAS getrf/getri there, where matinvBatched may win.
COMPLEX_SIZES = [4, 28, 32, 256]
BATCH_BYTES = 256 << 20
QUICK_BATCH_BYTES = 64 << 20
NUMPY_BATCH_BYTES = 16 << 20  # NumPy is timed on a smaller stack, reported per matrix
CUBLAS_BATCH_MAX = 65535  # cuBLAS batched calls take at most this many matrices
PEER_MAX_CALLS = 64  # peers run at most this many such calls per timed run
PEERS = ["cupy", "torch", "cublas_matinv", "jax", "numpy"]
CROSSOVER_SIZES = [16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
CROSSOVER_N = (2, 4, 8, 32)
ROUTE_N = (32, 64, 128, 192, 256, 384, 512)
ROUTE_BATCH_BYTES = 64 << 20
KERNEL_N = (2, 4, 8, 12, 16, 24, 32)
# Issue 10's GPU targets (rcond's cost, Cholesky against LU, solve against
# inv(a) @ b): the kernel routes' sizes and one above them.
NUMERICS_N = (2, 4, 8, 16, 32, 64)
SHAPE_N = (5, 6, 7, 8)  # where both kernel shapes exist (group of 8 lanes)
# GPU test files, the ones that only a GPU can check first.
FIRST_TEST_FILES = ("tests/test_kernels_gpu.py", "tests/test_cuda_gpu.py", "tests/test_interop.py")


@dataclass
class Scale:
    """Sizes of one run: the real ones, ``--quick``, or ``--tiny`` (CI on the CPU stand-in)."""

    threshold_n: tuple[int, ...] = THRESHOLD_N
    other_n: tuple[int, ...] = tuple(n for n in SIZES if n not in THRESHOLD_N)
    complex_n: tuple[int, ...] = tuple(COMPLEX_SIZES)
    host_n: tuple[int, ...] = tuple(SIZES)
    batch_bytes: int = BATCH_BYTES
    numpy_batch_bytes: int = NUMPY_BATCH_BYTES
    crossover_sizes: tuple[int, ...] = tuple(CROSSOVER_SIZES)
    crossover_n: tuple[int, ...] = CROSSOVER_N
    route_n: tuple[int, ...] = ROUTE_N
    route_batch_bytes: int = ROUTE_BATCH_BYTES
    kernel_n: tuple[int, ...] = KERNEL_N
    shape_n: tuple[int, ...] = SHAPE_N
    numerics_n: tuple[int, ...] = NUMERICS_N
    floor_bytes: int = 1024 << 20
    pinned_bytes: int = 256 << 20
    peer_chunk: int = CUBLAS_BATCH_MAX
    min_unit_s: float = 2.0


def scale_for(quick: bool, tiny: bool) -> Scale:
    if tiny:
        return Scale(threshold_n=(2, 4), other_n=(3,), complex_n=(2,), host_n=(2, 3), batch_bytes=4096,
                     numpy_batch_bytes=2048, crossover_sizes=(1024, 4096), crossover_n=(2,),
                     route_n=(3, 5), route_batch_bytes=2048, kernel_n=(2, 4), shape_n=(5,), numerics_n=(2, 4),
                     floor_bytes=1 << 16, pinned_bytes=1 << 16, peer_chunk=50, min_unit_s=0.0)
    if quick:
        return Scale(other_n=(128, 512), complex_n=(32,), host_n=(4, 32, 512), batch_bytes=QUICK_BATCH_BYTES,
                     crossover_n=(2, 8), route_n=(64, 256), kernel_n=(8, 16, 24, 32), shape_n=(6, 8),
                     numerics_n=(4, 16),
                     floor_bytes=256 << 20)
    return Scale()


# --- pure helpers (tested on CPU) ------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the GPU tests and benchmarks of gpuinv; write everything to --out."
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the logs and results")
    p.add_argument("--section", choices=(*SECTIONS, "all"), default="all",
                   help="tests (warm-up + pytest), bench (floors + benchmarks) or all (default); "
                        "one device call per section")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and repeats, smaller batches, no slow tests")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the section (default: tests 330, bench 330; --quick 240, 180; "
                        "all: their sum)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (median)")
    p.add_argument("--commit", default=None,
                   help="the commit measured (default: $GPUINV_COMMIT, else git rev-parse HEAD)")
    p.add_argument("--tests", action="append", default=None, metavar="PATH",
                   help="pytest targets (repeatable; default: the GPU test files, the GPU-only ones first)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the kernel warm-up and pytest-xdist (default: from the CPUs)")
    p.add_argument("--model", type=Path, default=None,
                   help="the cost model's JSON (default: benchmarks/results/model_sm<cc>.json if present)")
    p.add_argument("--tiny", action="store_true",
                   help="for CI on the CPU stand-in of CuPy: batches of a few KB, a handful of sizes")
    args = p.parse_args(argv)
    args.tiny = args.tiny or os.environ.get("GPUINV_CHECK_TINY", "") not in ("", "0")
    budgets = QUICK_BUDGET if args.quick else BUDGET
    if args.budget is None:
        args.budget = sum(budgets.values()) if args.section == "all" else budgets[args.section]
    if args.repeats is None:
        args.repeats = 3 if args.quick or args.tiny else 7
    return args


def resolve_commit(arg: str | None, env: dict[str, str] | None = None, repo: Path = REPO) -> dict[str, Any]:
    """The commit measured and where it came from: the argument, the environment or git."""
    env = os.environ if env is None else env
    if arg:
        return {"commit": arg, "commit_source": "--commit"}
    if env.get("GPUINV_COMMIT"):
        return {"commit": env["GPUINV_COMMIT"], "commit_source": "GPUINV_COMMIT"}
    if (repo / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                 timeout=30, check=False)
            if out.returncode == 0 and out.stdout.strip():
                dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                       capture_output=True, text=True, timeout=30, check=False).stdout.strip()
                return {"commit": out.stdout.strip() + ("-dirty" if dirty else ""), "commit_source": "git"}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"commit": None, "commit_source": "unknown: no --commit, no GPUINV_COMMIT and no .git"}


def batch_count(n: int, itemsize: int, nbytes: int = BATCH_BYTES) -> int:
    """Matrices in a stack of about ``nbytes``."""
    return max(1, nbytes // (n * n * itemsize))


def peer_batch(count: int, chunk: int = CUBLAS_BATCH_MAX, max_calls: int = PEER_MAX_CALLS) -> tuple[int, int]:
    """(matrices a peer is timed on, matrices per call): whole calls of at most ``chunk``."""
    if count <= chunk:
        return count, count
    calls = min(count // chunk, max_calls)
    return calls * chunk, chunk


def summarize(times: list[float] | None) -> float | None:
    return statistics.median(times) if times else None


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def case_row(case: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers of one case: matrices/s, fraction of floor and model, peer ratios."""
    t = summarize(case["times"].get("gpuinv", []))
    count = case["count"]
    rate = count / t if t else None
    row: dict[str, Any] = {"rate": rate}
    floor = case.get("floor_s")
    row["floor_fraction"] = floor / t if (t and floor) else None
    model = case.get("model") or {}
    ceiling = model.get("ceiling_matrices_per_s")
    row["model_ceiling"] = ceiling
    row["model_fraction"] = rate / ceiling if (rate and ceiling) else None
    row["limiter"] = model.get("limiter")
    for peer in PEERS:
        pt = summarize(case["times"].get(peer, []))
        pcount = case.get("peer_count", {}).get(peer, count)
        row[peer] = (pt / pcount) / (t / count) if (t and pt) else None
    return row


def format_table(cases: list[dict[str, Any]]) -> str:
    """Markdown table of the benchmark cases."""
    lines = [
        "| input | dtype | n | route | batch | gpuinv matrices/s | fraction of floor | model ceiling | "
        "of ceiling | limiter | " + " | ".join(f"vs {p}" for p in PEERS) + " |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|" + "---:|" * len(PEERS),
    ]
    for case in cases:
        row = case_row(case)
        lines.append(
            f"| {case['input']} | {case['dtype']} | {case['n']} | {case.get('route') or '-'} | "
            f"{case['count']} | {_fmt_rate(row['rate'])} | {_fmt_pct(row['floor_fraction'])} | "
            f"{_fmt_rate(row['model_ceiling'])} | {_fmt_pct(row['model_fraction'])} | "
            f"{row['limiter'] or '-'} | " + " | ".join(_fmt_ratio(row[p]) for p in PEERS) + " |"
        )
    lines.append("")
    lines.append("Ratios are peer time / gpuinv time per matrix (above 1: gpuinv is faster); peers run "
                 f"in calls of at most {CUBLAS_BATCH_MAX} matrices. The floor is a device-to-device copy of "
                 "the input and output bytes for CuPy input, and the pinned upload plus download "
                 "(overlapped) for NumPy input. The model ceiling is `python -m gpuinv.kernels --model`'s "
                 "prediction for the kernel instantiation (empty where no model file was found).")
    return "\n".join(lines)


#: Issue 10's ratios: (column, numerator, denominator), times of the same run.
NUMERICS_RATIOS = (
    ("rcond cost", "inv_ex_rcond", "inv_ex"),
    ("Cholesky speed-up", "general_on_spd", "positive_definite"),
    ("triangular speed-up", "general_on_tri", "lower_triangular"),
    ("solve speed-up", "inv_matmul", "solve"),
)


def format_numerics(cases: list[dict[str, Any]]) -> str:
    """Markdown table of issue 10's ratios (time / time, medians of the same run)."""
    lines = ["| dtype | n | batch | " + " | ".join(c for c, _, _ in NUMERICS_RATIOS) + " |",
             "|---|---:|---:|" + "---:|" * len(NUMERICS_RATIOS)]
    for case in cases:
        cells = []
        for _, num, den in NUMERICS_RATIOS:
            tn, td = summarize(case["times"].get(num)), summarize(case["times"].get(den))
            cells.append(_fmt_ratio(tn / td) if (tn and td) else "-")
        lines.append(f"| {case['dtype']} | {case['n']} | {case['count']} | " + " | ".join(cells) + " |")
    lines += ["", "rcond cost: `inv_ex(a, rcond=True)` / `inv_ex(a)` (target: almost 1 on the kernel routes). "
              "Speed-ups: the general inverse of the same matrices / `assume_a` (target 1.5x at n >= 16 for "
              "the Cholesky route), and `inv_ex(a).inverse @ b` / `solve_ex(a, b)` with one right-hand side "
              "(target 1.5x)."]
    return "\n".join(lines)


def crossover(sizes: list[int], cpu_times: list[float | None], gpu_times: list[float | None]) -> int | None:
    """The smallest size from which the GPU is faster at every larger size."""
    best = None
    for size, c, g in reversed(list(zip(sizes, cpu_times, gpu_times))):
        if c is not None and g is not None and g < c:
            best = size
        else:
            break
    return best


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become None (strict parsers reject NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return _clean(x.item())
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def write_json(path: Path, data: Any) -> None:
    """Write then rename, so that a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1, allow_nan=False))
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- the cost model's ceilings ------------------------------------------------------


def load_model(path: Path | None) -> dict[tuple[str, int, str, str], dict[str, Any]]:
    """Records of the model's JSON keyed by (dtype, n, shape, arch); empty if absent or unreadable.

    The shape is the record's ``kind`` where it has one (``"chol-thread"`` for
    the Cholesky kernel), so that it does not stand in for the LU kernel's.
    """
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        records = data["kernels"]
        out = {}
        for r in records:
            arch = str(r["arch"]).removeprefix("sm_")
            out[(str(r["dtype"]), int(r["n"]), str(r.get("kind", r["shape"])), arch)] = r
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def model_entry(model: dict, dtype: Any, n: int, shape: str, arch: str | None) -> dict[str, Any] | None:
    if arch is None:
        return None
    r = model.get((np.dtype(dtype).name, int(n), shape, str(arch).removeprefix("sm_")))
    if r is None:
        return None
    return {k: r.get(k) for k in ("ceiling_matrices_per_s", "hbm_share_ceiling", "limiter")}


# --- pytest as a child: command, deadline, log ----------------------------------------


def gpu_test_files(repo: Path = REPO) -> list[str]:
    """The test files that hold GPU tests, the GPU-only ones first."""
    found = sorted(str(p.relative_to(repo)) for p in (repo / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(errors="replace"))
    first = [f for f in FIRST_TEST_FILES if f in found]
    return first + [f for f in found if f not in first]


def pytest_command(targets: list[str], *, quick: bool, workers: int, have_xdist: bool,
                   have_timeout: bool) -> list[str]:
    """Verbose, short tracebacks, every failure summarized; xdist and a per-test timeout if installed."""
    cmd = [sys.executable, "-m", "pytest", "-v", "--tb=short", "-rfE", "-p", "no:cacheprovider",
           "--durations=15", "-m", "gpu and not slow" if quick else "gpu"]
    if have_xdist and workers > 1:
        cmd += ["-n", str(workers)]
    if have_timeout:
        cmd += ["--timeout=150"]
    return cmd + list(targets)


def read_log(path: Path) -> str:
    """A child's log, whatever bytes it wrote."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


_OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
_COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def parse_pytest_log(text: str) -> dict[str, Any]:
    """What pytest's verbose log says: summary line, counts, failures, outcomes seen."""
    lines = text.splitlines()
    summary = None
    for line in reversed(lines):
        s = line.strip()
        if s.startswith("=") and s.endswith("=") and (" in " in s or "no tests ran" in s):
            summary = s.strip("= ").strip()
            break
    counts: dict[str, int] = {}
    if summary:
        for num, what in _COUNTS.findall(summary):
            counts[what.rstrip("s") if what in ("errors", "warnings") else what] = int(num)
    failed = []
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            failed.append(line.split(" - ")[0].strip())
    seen: dict[str, int] = {}
    for line in lines:
        if "::" in line and (m := _OUTCOME.search(line)):
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
    return {"summary": summary, "counts": counts, "failed": sorted(set(failed)), "outcomes_seen": seen,
            "interrupted": "KeyboardInterrupt" in text or "Interrupted:" in text}


def run_pytest(cmd: list[str], log_path: Path, deadline: float, env: dict[str, str],
               grace: float = PYTEST_GRACE_S) -> dict[str, Any]:
    """Run ``cmd`` until done or ``deadline`` (monotonic); then SIGINT, then kill its session."""
    start = time.monotonic()
    stopped = None
    with log_path.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # SIGINT first: pytest then reports the failures so far and a summary.
            stopped = "sigint"
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                stopped = "killed"
                for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        # xdist workers or test children left behind in its session
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return {"rc": proc.returncode, "stopped": stopped, "seconds": time.monotonic() - start}


# --- recording --------------------------------------------------------------------


class Recorder:
    """Holds a section's results and rewrites its JSON and markdown after each step."""

    def __init__(self, out: Path, deadline: float, stem: str = "results",
                 render: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.out = out
        self.deadline = deadline
        self.stem = stem
        self.render = render or render_bench
        self.data: dict[str, Any] = {"cases": [], "floors": {}, "skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def error(self, message: str) -> None:
        self.data["errors"].append(message[:2000])
        log(f"error: {message[:500]}")

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})

    def save(self) -> None:
        write_json(self.out / f"{self.stem}.json", self.data)
        write_text(self.out / f"{self.stem}.md", self.render(self.data))


def _machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return (f"GPU: {m.get('gpu', '?')} (compute capability {m.get('compute_capability', '?')}); "
            f"CuPy {m.get('cupy', '?')}, CUDA runtime {m.get('cuda_runtime', '?')}, "
            f"driver {m.get('cuda_driver', '?')}; "
            f"commit {m.get('commit', '?')} ({m.get('commit_source', '?')})")


def _tail(data: dict[str, Any], md: list[str]) -> None:
    if data.get("skipped"):
        md += ["", "## Skipped", ""]
        md += [f"- {s['what']}: {s['why']}" for s in data["skipped"]]
    if data.get("errors"):
        md += ["", "## Errors", ""]
        md += [f"- `{e[:300]}`" for e in data["errors"]]


def render_bench(data: dict[str, Any]) -> str:
    md = ["# gpuinv GPU check: benchmarks", "", _machine_line(data), ""]
    if data.get("aborted"):
        md += [f"**Stopped early:** {data['aborted']}", ""]
    floors = data.get("floors") or {}
    if floors:
        md.append("Floors (GB/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in floors.items()
                                                if isinstance(v, (int, float))))
        md.append("")
    if data.get("peers"):
        md.append("Peers: " + ", ".join(f"{k}: {v}" for k, v in data["peers"].items()))
        md.append("")
    md.append(format_table(data.get("cases", [])))
    if data.get("numerics"):
        md += ["", "## numerics (issue 10 targets)", "", format_numerics(data["numerics"])]
    for key in ("kernel_threshold", "shape_threshold", "crossover", "route_threshold", "warm_up"):
        if key in data:
            md += ["", f"## {key}", "```", json.dumps(_clean(data[key]), indent=1), "```"]
    _tail(data, md)
    return "\n".join(md) + "\n"


def render_tests(data: dict[str, Any]) -> str:
    md = ["# gpuinv GPU check: tests", "", _machine_line(data), ""]
    w = data.get("warm_up")
    if w:
        md.append(f"Kernel warm-up: {w.get('kernels', '?')} instantiations in {w.get('seconds', 0):.1f} s "
                  f"({w.get('origins', {})}, {w.get('workers', '?')} workers)")
        md.append("")
    t = data.get("tests")
    if t:
        md.append(f"Command: `{' '.join(t.get('command', []))}`")
        md.append("")
        md.append(f"Summary: {t.get('summary') or '(none printed)'}; exit status {t.get('rc')}; "
                  f"{t.get('seconds', 0):.0f} s" + (f"; stopped by {t['stopped']} at the deadline"
                                                   if t.get("stopped") else ""))
        md.append(f"Outcomes seen: {t.get('outcomes_seen', {})}")
        if t.get("failed"):
            md += ["", "## Failed", ""] + [f"- `{f}`" for f in t["failed"]]
    _tail(data, md)
    return "\n".join(md) + "\n"


_LOG: list[Path] = []


def log(message: str) -> None:
    """Print, and append to this section's own log file."""
    print(message, flush=True)
    for path in _LOG:
        try:
            with path.open("a", encoding="utf-8", errors="replace") as fh:
                fh.write(message + "\n")
        except OSError:
            pass


# --- machine info ---------------------------------------------------------------------


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(commit: dict[str, Any]) -> dict[str, Any]:
    import cupy

    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "cupy": cupy.__version__, "host": platform.node(), **commit}
    for dist in ("torch", "jax", "jaxlib", "scipy", "pytest-xdist", "pytest-timeout"):
        info[dist] = _version(dist)
    rt = cupy.cuda.runtime
    info["cuda_runtime"] = rt.runtimeGetVersion()
    info["cuda_driver"] = rt.driverGetVersion()
    props = rt.getDeviceProperties(0)
    name = props["name"]
    info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    info["gpu_memory_bytes"] = props.get("totalGlobalMem")
    info["device_count"] = rt.getDeviceCount()
    try:
        info["compute_capability"] = str(cupy.cuda.Device(0).compute_capability)
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        info["compute_capability"] = None
        info["compute_capability_error"] = repr(exc)
    try:
        from cupy.cuda import nvrtc

        info["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001
        info["nvrtc"] = f"unavailable: {exc!r}"
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30,
                                            check=False, errors="replace").stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    return info


def _workers(requested: int | None) -> int:
    if requested:
        return max(1, requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus


def warm_kernels(rec: Recorder, dtypes: list[Any] | None, ns: list[int] | None, workers: int | None,
                 extra: list[Any] = ()) -> None:
    """Fill the kernel caches in parallel, through the engine's own compile path."""
    from gpuinv import kernels

    start = time.monotonic()
    try:
        report = kernels.warm_up(dtypes, ns, workers=_workers(workers), extra=extra)
    except Exception as exc:  # noqa: BLE001 - the tests then compile on first use
        rec.error(f"kernel warm-up: {exc!r}")
        return
    origins: dict[str, int] = {}
    for r in report:
        origins[r["origin"]] = origins.get(r["origin"], 0) + 1
    rec.data["warm_up"] = {"kernels": len(report), "seconds": time.monotonic() - start, "origins": origins,
                           "workers": _workers(workers),
                           "slowest": sorted(report, key=lambda r: -r["seconds"])[:5]}
    log(f"kernel warm-up: {len(report)} instantiations in {time.monotonic() - start:.1f} s {origins}")
    rec.save()


# --- tests section ------------------------------------------------------------------------


def run_tests_section(args: argparse.Namespace, rec: Recorder, scale: Scale) -> int:
    if scale.min_unit_s == 0:  # tiny: only what the plan of a CI run uses
        warm_kernels(rec, ["float32", "float64"], [1, 2], args.workers)
    else:
        warm_kernels(rec, None, None, args.workers)
    targets = args.tests or gpu_test_files()
    have_xdist = importlib.util.find_spec("xdist") is not None
    have_timeout = importlib.util.find_spec("pytest_timeout") is not None
    # xdist: one process per two CPUs, at most 8: each holds a CUDA context and
    # CuPy's pools, and the GPU is shared anyway.
    workers = min(8, max(1, _workers(args.workers) // 2))
    cmd = pytest_command(targets, quick=args.quick, workers=workers, have_xdist=have_xdist,
                         have_timeout=have_timeout)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
               XLA_PYTHON_CLIENT_ALLOCATOR="platform")
    log_path = rec.out / "pytest-gpu.log"
    deadline = time.monotonic() + rec.left() - RESERVE_S - PYTEST_GRACE_S
    rec.data["tests"] = {"command": cmd, "deadline_s": deadline - time.monotonic(), "xdist": have_xdist,
                         "timeout_plugin": have_timeout}
    rec.save()
    log(f"pytest: {' '.join(cmd)} (for at most {deadline - time.monotonic():.0f} s)")
    result = run_pytest(cmd, log_path, deadline, env)
    parsed = parse_pytest_log(read_log(log_path))
    rec.data["tests"].update(result)
    rec.data["tests"].update(parsed)
    rec.save()
    log(f"tests: {parsed['summary']} (rc {result['rc']}, {result['seconds']:.0f} s"
        + (f", stopped by {result['stopped']})" if result["stopped"] else ")"))
    for f in parsed["failed"]:
        log(f"  {f}")
    return 0


# --- timing -----------------------------------------------------------------------


def time_events(fn: Callable[[], Any], repeats: int, max_seconds: float) -> list[float]:
    """CUDA-event times of ``fn`` on the current stream, after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.get_current_stream().synchronize()
    times: list[float] = []
    spent = time.monotonic()
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        if time.monotonic() - spent > max_seconds:
            break
    return times


def time_wall(fn: Callable[[], Any], repeats: int, max_seconds: float,
              sync: Callable[[Any], Any] = lambda r: r) -> list[float]:
    sync(fn())
    times: list[float] = []
    spent = time.monotonic()
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        if time.monotonic() - spent > max_seconds:
            break
    return times


class StickyCudaError(RuntimeError):
    """The CUDA context no longer works: nothing after this can be measured."""


def context_error() -> str | None:
    """None if the device still computes; else what went wrong (a sticky error)."""
    import cupy

    try:
        cupy.cuda.Device().synchronize()
        probe = cupy.asarray(np.arange(4, dtype=np.float64))
        value = float(cupy.asnumpy(probe * 2).sum())
        if value != 12.0:
            return f"the device returned {value} for 2 * (0 + 1 + 2 + 3)"
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer
        return repr(exc)
    return None


def guarded(rec: Recorder, what: str, fn: Callable[[], Any], errors: dict[str, str] | None = None,
            key: str | None = None) -> Any:
    """Run ``fn``; record a failure and go on, unless it broke the CUDA context."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
        rec.error(f"{what}: {exc!r}")
        if errors is not None and key is not None:
            errors[key] = repr(exc)[:500]
        problem = context_error()
        if problem is not None:
            raise StickyCudaError(f"after {what} failed ({exc!r}), the CUDA context is unusable: {problem}") \
                from exc
        return None


def measure_floors(rec: Recorder, repeats: int, scale: Scale) -> None:
    import cupy

    size = scale.floor_bytes
    rec.data["floors"]["d2d_bytes_per_s"] = 2 * size / _time_d2d(size, repeats)  # read + write
    hsize = scale.pinned_bytes
    up, down = _time_pinned(hsize, repeats)
    rec.data["floors"]["h2d_pinned_bytes_per_s"] = hsize / up
    rec.data["floors"]["d2h_pinned_bytes_per_s"] = hsize / down
    cupy.get_default_memory_pool().free_all_blocks()
    rec.save()


def _time_d2d(size: int, repeats: int) -> float:
    import cupy

    src = cupy.empty(size, dtype=np.uint8)
    dst = cupy.empty_like(src)
    src.fill(1)
    return summarize(time_events(lambda: dst.__setitem__(Ellipsis, src), repeats, 10))


def _time_pinned(hsize: int, repeats: int) -> tuple[float, float]:
    import cupy

    mem = cupy.cuda.PinnedMemoryPointer(cupy.cuda.PinnedMemory(hsize), 0)
    host = np.frombuffer(mem, dtype=np.uint8, count=hsize)
    host[:] = 1
    dev = cupy.empty(hsize, dtype=np.uint8)
    stream = cupy.cuda.get_current_stream()
    rt = cupy.cuda.runtime
    up = summarize(time_events(lambda: rt.memcpyAsync(dev.data.ptr, host.ctypes.data, hsize,
                                                      rt.memcpyHostToDevice, stream.ptr),
                               repeats, 10))
    down = summarize(time_events(lambda: rt.memcpyAsync(host.ctypes.data, dev.data.ptr, hsize,
                                                        rt.memcpyDeviceToHost, stream.ptr),
                                 repeats, 10))
    return up, down


# --- peers ------------------------------------------------------------------------------


def loaded_library(stem: str, maps_text: str) -> str | None:
    """The path of a loaded ``<stem>.so*`` in a /proc/<pid>/maps text (not ``<stem>Lt``)."""
    pattern = re.compile(rf"(/\S*/{re.escape(stem)}\.so[.\d]*)$")
    for line in maps_text.splitlines():
        if m := pattern.search(line.strip()):
            return m.group(1)
    return None


class MatinvBatched:
    """cuBLAS ``<t>matinvBatched`` (n < 32), called through ctypes on the cuBLAS CuPy loaded.

    CuPy 14 does not wrap it. ``functions`` maps a dtype to the C function
    (or a stand-in taking the same integers); ``handle`` is CuPy's cuBLAS
    handle, whose stream is set to CuPy's current one before each use.
    """

    LETTERS = {np.dtype(np.float32): "S", np.dtype(np.float64): "D",
               np.dtype(np.complex64): "C", np.dtype(np.complex128): "Z"}

    def __init__(self, functions: dict[np.dtype, Any], handle: int, set_stream: Callable[[int, int], Any]):
        self.functions = functions
        self.handle = handle
        self.set_stream = set_stream

    @classmethod
    def from_cupy(cls) -> MatinvBatched:
        """Find libcublas as CuPy loaded it; raise RuntimeError saying why not."""
        import cupy
        from cupy.cuda import cublas

        binding = getattr(cublas, "__file__", None)
        if not binding:
            raise RuntimeError("cupy.cuda.cublas is not CuPy's compiled cuBLAS binding")
        # The very library CuPy's handle belongs to: another copy of cuBLAS
        # would not know the handle. CuPy 14 loads it with cuda.pathfinder
        # before importing the binding, and pathfinder returns the copy it
        # loaded; else it is in this process's map; else dlopen the soname the
        # binding links, which returns the copy already loaded.
        path = None
        try:
            from cuda import pathfinder

            path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
        except Exception:  # noqa: BLE001, S110 - an older CuPy: look further
            pass
        try:
            path = path or loaded_library("libcublas", Path("/proc/self/maps").read_text())
        except OSError:
            pass
        if path is None:
            m = re.search(rb"libcublas\.so\.\d+", Path(binding).read_bytes())
            path = m.group(0).decode() if m else None
        if path is None:
            raise RuntimeError(f"cannot tell which libcublas {binding} uses")
        lib = ctypes.CDLL(path)
        functions = {}
        for dt, letter in cls.LETTERS.items():
            fn = getattr(lib, f"cublas{letter}matinvBatched")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
            functions[dt] = fn
        handle = cupy.cuda.device.get_cublas_handle()
        return cls(functions, handle, cublas.setStream)

    def prepare(self, a: Any, chunk: int) -> Callable[[], Any]:
        """A call that inverts every matrix of ``a`` (m, n, n) in calls of ``chunk``.

        The pointer arrays are built once, outside the timed call. ``a`` is
        row-major: cuBLAS inverts the transposes, whose inverses are the
        transposes of the inverses, so ``out`` holds the inverses row-major.
        """
        import cupy

        m, n = a.shape[0], a.shape[1]
        dt = np.dtype(a.dtype)
        if n >= 32:
            raise ValueError(f"matinvBatched takes n < 32, got {n}")
        fn = self.functions[dt]
        out = cupy.empty_like(a)
        info = cupy.empty(m, dtype=np.int32)
        step = n * n * dt.itemsize
        offsets = np.arange(m, dtype=np.uint64) * np.uint64(step)
        a_ptrs = cupy.asarray(offsets + np.uint64(a.data.ptr))
        c_ptrs = cupy.asarray(offsets + np.uint64(out.data.ptr))
        letter = self.LETTERS[dt]

        def run() -> Any:
            self.set_stream(self.handle, cupy.cuda.get_current_stream().ptr)
            for i in range(0, m, chunk):
                batch = min(chunk, m - i)
                status = fn(self.handle, n, a_ptrs.data.ptr + 8 * i, n, c_ptrs.data.ptr + 8 * i, n,
                            info.data.ptr + 4 * i, batch)
                if status != 0:
                    raise RuntimeError(f"cublas{letter}matinvBatched returned status {status}")
            return out, info

        return run


def load_peers(rec: Recorder) -> dict[str, Any]:
    """The peers that work here; each absent one is recorded with the reason."""
    peers: dict[str, Any] = {}
    status: dict[str, str] = {"gpuinv": "ok", "cupy": "ok", "numpy": "ok"}
    try:
        import torch

        if torch.cuda.is_available():
            peers["torch"] = torch
            status["torch"] = f"ok ({torch.__version__})"
        else:
            status["torch"] = "absent: torch.cuda.is_available() is False"
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        status["torch"] = f"absent: {exc!r}"
    try:
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            jax.config.update("jax_enable_x64", True)  # float64 stays float64
            peers["jax"] = jax
            status["jax"] = f"ok ({jax.__version__})"
        else:
            status["jax"] = "absent: no JAX GPU device"
    except Exception as exc:  # noqa: BLE001
        status["jax"] = f"absent: {exc!r}"
    try:
        peers["cublas_matinv"] = MatinvBatched.from_cupy()
        status["cublas_matinv"] = "ok"
    except Exception as exc:  # noqa: BLE001
        status["cublas_matinv"] = f"absent: {exc!r}"
    rec.data["peers"] = status
    rec.save()
    return peers


def random_device_stack(count: int, n: int, dtype: Any, seed: int = 0) -> Any:
    import cupy

    rs = cupy.random.RandomState(seed)
    real = np.dtype(dtype).kind == "f"
    base = np.float32 if np.dtype(dtype) in (np.float32, np.complex64) else np.float64
    a = rs.standard_normal((count, n, n), dtype=base)
    if not real:
        a = a + 1j * rs.standard_normal((count, n, n), dtype=base)
    a += n * cupy.eye(n, dtype=base)
    return a.astype(dtype)


def _chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, total)) for i in range(0, total, chunk)]


@dataclass
class Bench:
    """State shared by the benchmark units."""

    rec: Recorder
    peers: dict[str, Any]
    scale: Scale
    repeats: int
    model: dict = field(default_factory=dict)
    arch: str | None = None
    device_cases: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    # -- CuPy input ------------------------------------------------------------------
    def device_case(self, n: int, dtype: Any, cap: float, peers: tuple[str, ...]) -> None:
        import cupy

        import gpuinv
        from gpuinv import kernels
        from gpuinv.engines.cuda.routes import cuda_route

        dt = np.dtype(dtype)
        count = batch_count(n, dt.itemsize, self.scale.batch_bytes)
        d2d = self.rec.data["floors"].get("d2d_bytes_per_s")
        route = cuda_route(n, dt)
        case: dict[str, Any] = {"input": "cupy", "dtype": dt.name, "n": n, "count": count, "route": route,
                                "times": {}, "peer_count": {}, "peer_errors": {},
                                "floor_s": 2 * count * n * n * dt.itemsize / d2d if d2d else None}
        if route == "kernel":
            spec = kernels.kernel_spec(n, dt)
            case["kernel"] = {"shape": spec.shape, "block": spec.block, "group": spec.group}
            case["model"] = model_entry(self.model, dt, n, spec.shape, self.arch)
        self.rec.data["cases"].append(case)
        self.device_cases[(dt.name, n)] = case
        a = random_device_stack(count, n, dt)
        each = cap / (2 + len(peers))
        label = f"n={n} {dt.name}"
        case["times"]["gpuinv"] = guarded(self.rec, f"gpuinv.inv_ex {label}",
                                          lambda: time_events(lambda: gpuinv.inv_ex(a), self.repeats, each))
        case["times"]["gpuinv_inv_raise"] = guarded(
            self.rec, f"gpuinv.inv {label}", lambda: time_events(lambda: gpuinv.inv(a), self.repeats, each))
        self.rec.save()
        pcount, chunk = peer_batch(count, self.scale.peer_chunk)
        case["peer_call_matrices"] = chunk
        for peer in peers:
            if self.rec.left() <= 0:
                self.rec.skip(f"{peer} {label}", "out of time")
                continue
            if peer == "cupy":
                fn = lambda: [cupy.linalg.inv(a[i:j]) for i, j in _chunks(pcount, chunk)]  # noqa: E731
            elif peer == "torch" and "torch" in self.peers:
                torch = self.peers["torch"]
                t = torch.from_dlpack(a[:pcount])
                fn = lambda t=t: [  # noqa: E731
                    torch.linalg.inv_ex(t[i:j]) for i, j in _chunks(pcount, chunk)]
            elif peer == "cublas_matinv" and "cublas_matinv" in self.peers:
                if n >= 32:
                    continue
                fn = guarded(self.rec, f"cublas_matinv setup {label}",
                             lambda: self.peers["cublas_matinv"].prepare(a[:pcount], chunk),
                             case["peer_errors"], peer)
                if fn is None:
                    continue
            else:
                continue  # absent here: load_peers recorded why
            case["peer_count"][peer] = pcount
            case["times"][peer] = guarded(self.rec, f"{peer} {label}",
                                          lambda fn=fn: time_events(fn, self.repeats, each),
                                          case["peer_errors"], peer)
            self.rec.save()
        del a
        cupy.get_default_memory_pool().free_all_blocks()

    def jax_peer(self, n: int, dtype: Any, cap: float) -> None:
        """Add JAX's times to the CuPy-input case timed earlier (jit per shape)."""
        import cupy

        dt = np.dtype(dtype)
        case = self.device_cases.get((dt.name, n))
        if case is None or "jax" not in self.peers:
            return
        jax = self.peers["jax"]
        pcount, chunk = peer_batch(case["count"], self.scale.peer_chunk)
        host = cupy.asnumpy(random_device_stack(pcount, n, dt))
        xs = [jax.device_put(host[i:j]) for i, j in _chunks(pcount, chunk)]
        f = jax.jit(jax.numpy.linalg.inv)
        case["peer_count"]["jax"] = pcount
        case["times"]["jax"] = guarded(
            self.rec, f"jax n={n} {dt.name}",
            lambda: time_wall(lambda: [f(x) for x in xs], self.repeats, cap,
                              sync=lambda rs: [r.block_until_ready() for r in rs]),
            case["peer_errors"], "jax")
        self.rec.save()

    # -- NumPy input -------------------------------------------------------------------
    def host_case(self, n: int, dtype: Any, cap: float) -> None:
        import cupy

        import gpuinv

        dt = np.dtype(dtype)
        count = batch_count(n, dt.itemsize, self.scale.batch_bytes)
        floors = self.rec.data["floors"]
        h2d, d2h = floors.get("h2d_pinned_bytes_per_s"), floors.get("d2h_pinned_bytes_per_s")
        full = cupy.asnumpy(random_device_stack(count, n, dt, seed=1))
        nbytes = full.nbytes
        small = full[: batch_count(n, dt.itemsize, self.scale.numpy_batch_bytes)]
        pcount, chunk = peer_batch(count, self.scale.peer_chunk)
        case: dict[str, Any] = {"input": "numpy", "dtype": dt.name, "n": n, "count": count,
                                "times": {}, "peer_count": {"numpy": len(small), "torch": pcount,
                                                            "cupy": pcount},
                                "peer_errors": {},
                                "floor_s": max(nbytes / h2d, nbytes / d2h) if h2d and d2h else None,
                                "serial_floor_s": nbytes / h2d + nbytes / d2h if h2d and d2h else None}
        self.rec.data["cases"].append(case)
        label = f"numpy input n={n} {dt.name}"
        each = cap / 5
        case["times"]["gpuinv"] = guarded(
            self.rec, f"gpuinv {label}",
            lambda: time_wall(lambda: gpuinv.inv_ex(full, device="cuda"), self.repeats, each))
        case["times"]["numpy"] = guarded(
            self.rec, f"numpy {label}", lambda: time_wall(lambda: np.linalg.inv(small),
                                                          max(1, self.repeats // 2), each))
        if "torch" in self.peers:  # torch's own round trip: upload, inv_ex, download
            torch = self.peers["torch"]
            th = torch.from_numpy(full[:pcount])
            case["times"]["torch"] = guarded(
                self.rec, f"torch {label}",
                lambda: time_wall(lambda: [r.cpu() for i, j in _chunks(pcount, chunk)
                                           for r in torch.linalg.inv_ex(th[i:j].cuda())], self.repeats, each),
                case["peer_errors"], "torch")
        case["times"]["cupy"] = guarded(
            self.rec, f"cupy {label}",
            lambda: time_wall(lambda: [cupy.asnumpy(cupy.linalg.inv(cupy.asarray(full[i:j])))
                                       for i, j in _chunks(pcount, chunk)], self.repeats, each),
            case["peer_errors"], "cupy")
        self.rec.save()

    # -- issue 10: rcond, assume_a, solve ---------------------------------------------
    def numerics_case(self, n: int, dtype: Any, cap: float) -> None:
        """Issue 10's GPU targets on CuPy input, each against its baseline in the same run:
        ``inv_ex`` with and without ``rcond``; positive definite against the general
        inverse of the same matrices; lower triangular likewise; ``solve_ex`` with one
        right-hand side against ``inv_ex(a).inverse @ b``."""
        import cupy

        import gpuinv

        dt = np.dtype(dtype)
        count = batch_count(n, dt.itemsize, self.scale.batch_bytes)
        a = random_device_stack(count, n, dt)
        spd = a @ a.swapaxes(-1, -2).conj() + n * cupy.eye(n, dtype=dt)
        tri = a * cupy.asarray(np.tril(np.ones((n, n), dtype=dt))) + n * cupy.eye(n, dtype=dt)
        b = random_device_stack(count, n, dt, seed=2)[:, :, :1]  # (count, n, 1): one right-hand side
        case: dict[str, Any] = {"dtype": dt.name, "n": n, "count": count, "times": {}}
        self.rec.data.setdefault("numerics", []).append(case)
        label = f"n={n} {dt.name}"
        runs = {
            "inv_ex": lambda: gpuinv.inv_ex(a),
            "inv_ex_rcond": lambda: gpuinv.inv_ex(a, rcond=True),
            "general_on_spd": lambda: gpuinv.inv_ex(spd),
            "positive_definite": lambda: gpuinv.inv_ex(spd, assume_a="positive definite"),
            "general_on_tri": lambda: gpuinv.inv_ex(tri),
            "lower_triangular": lambda: gpuinv.inv_ex(tri, assume_a="lower triangular"),
            "solve": lambda: gpuinv.solve_ex(a, b),
            "inv_matmul": lambda: gpuinv.inv_ex(a).inverse @ b,
        }
        each = cap / len(runs)
        for key, fn in runs.items():
            if self.rec.left() <= 0:
                self.rec.skip(f"numerics {key} {label}", "out of time")
                continue
            case["times"][key] = guarded(self.rec, f"numerics {key} {label}",
                                         lambda fn=fn: time_events(fn, self.repeats, each))
            self.rec.save()
        del a, spd, tri, b
        cupy.get_default_memory_pool().free_all_blocks()

    # -- thresholds ---------------------------------------------------------------------
    def kernel_threshold(self, cap: float) -> None:
        """KERNEL_MAX_N: our kernels against cuBLAS getrf/getri, through the engine."""
        self._compare_routes("kernel_threshold", ("kernel", "cublas"), self.scale.kernel_n, cap)

    def route_threshold(self, cap: float) -> None:
        """CUDA_CUSOLVER_MIN_N: batched cuBLAS against per-matrix cuSOLVER."""
        self._compare_routes("route_threshold", ("cublas", "cusolver"), self.scale.route_n, cap)

    def _compare_routes(self, key: str, routes: tuple[str, ...], sizes: tuple[int, ...], cap: float) -> None:
        from gpuinv import kernels
        from gpuinv._normalize import normalize
        from gpuinv._request import make_request
        from gpuinv.engines import cuda_engine

        engine = cuda_engine(None)
        general = make_request("inverse")  # the general inverse, no rcond: one route at a time
        result = self.rec.data.setdefault(key, {})
        todo = [(dt, n) for dt in (np.float64, np.float32) for n in sizes]
        stop = time.monotonic() + cap
        for k, (dtype, n) in enumerate(todo):
            dt = np.dtype(dtype)
            usable = [r for r in routes if r != "kernel" or n <= kernels.KERNEL_MAX_N[dt]]
            if len(usable) < 2:
                continue
            left = stop - time.monotonic()
            if left <= 0 or self.rec.left() <= 0:
                self.rec.skip(f"{key} {dt.name} n={n}", "out of time")
                continue
            each = left / (len(todo) - k) / (len(usable) + 1)
            count = batch_count(n, dt.itemsize, self.scale.route_batch_bytes)
            op = normalize(random_device_stack(count, n, dt))
            row: dict[str, Any] = {"count": count, "matrices_per_s": {}}
            for route in usable:
                t = guarded(self.rec, f"{key} {route} {dt.name} n={n}",
                            lambda route=route: summarize(time_events(
                                lambda: engine.inverse(general, op, route=route), self.repeats, each)))
                row["matrices_per_s"][route] = count / t if t else None
            rates = {r: v for r, v in row["matrices_per_s"].items() if v}
            row["faster"] = max(rates, key=rates.get) if rates else None
            if "kernel" in usable:
                spec = kernels.kernel_spec(n, dt)
                row["model"] = model_entry(self.model, dt, n, spec.shape, self.arch)
                ceiling = (row["model"] or {}).get("ceiling_matrices_per_s")
                kr = row["matrices_per_s"].get("kernel")
                row["kernel_of_model"] = kr / ceiling if (kr and ceiling) else None
            result[f"{dt.name} n={n}"] = row
            self.rec.save()

    def shape_threshold(self, cap: float) -> None:
        """THREAD_MAX_N: one thread per matrix against a lane group, where both exist."""
        import cupy

        from gpuinv import kernels

        result = self.rec.data.setdefault("shape_threshold", {})
        todo = [(dt, n) for dt in (np.float64, np.float32) for n in self.scale.shape_n]
        stop = time.monotonic() + cap
        for k, (dtype, n) in enumerate(todo):
            dt = np.dtype(dtype)
            left = stop - time.monotonic()
            if left <= 0 or self.rec.left() <= 0:
                self.rec.skip(f"shape_threshold {dt.name} n={n}", "out of time")
                continue
            each = left / (len(todo) - k) / 3
            specs = {s.shape: s for s in shape_variants(n, dt)}
            if len(specs) < 2:
                continue
            count = batch_count(n, dt.itemsize, self.scale.route_batch_bytes)
            a = random_device_stack(count, n, dt)
            out = cupy.empty_like(a)
            info = cupy.empty(count, dtype=np.int32)
            row: dict[str, Any] = {"count": count, "default": kernels.kernel_spec(n, dt).shape,
                                   "matrices_per_s": {}, "model": {}}
            for shape, spec in specs.items():
                t = guarded(self.rec, f"shape {shape} {dt.name} n={n}",
                            lambda spec=spec: summarize(time_events(
                                lambda: kernels._launch(spec, a, out, info), self.repeats, each)))
                row["matrices_per_s"][shape] = count / t if t else None
                row["model"][shape] = model_entry(self.model, dt, n, shape, self.arch)
            rates = {r: v for r, v in row["matrices_per_s"].items() if v}
            row["faster"] = max(rates, key=rates.get) if rates else None
            result[f"{dt.name} n={n}"] = row
            self.rec.save()

    def numpy_crossover(self, cap: float) -> None:
        """config.cuda_min_bytes: NumPy stacks on the CPU engine against through the GPU."""
        import gpuinv

        result = self.rec.data.setdefault("crossover", {})
        sizes = list(self.scale.crossover_sizes)
        stop = time.monotonic() + cap
        for k, n in enumerate(self.scale.crossover_n):
            left = stop - time.monotonic()
            if left <= 0 or self.rec.left() <= 0:
                self.rec.skip(f"crossover n={n} float64", "out of time")
                continue
            each = left / (len(self.scale.crossover_n) - k) / (2 * len(sizes))
            rng = np.random.default_rng(n)
            cpu: list[float | None] = []
            gpu: list[float | None] = []
            for nbytes in sizes:
                count = batch_count(n, 8, nbytes)
                a = rng.standard_normal((count, n, n)) + n * np.eye(n)
                for where, times in (("cpu", cpu), ("cuda", gpu)):
                    run = lambda a=a, where=where: gpuinv.inv_ex(a, device=where)  # noqa: E731
                    times.append(guarded(self.rec, f"crossover {where} n={n} {nbytes} B",
                                         lambda run=run: summarize(time_wall(run, self.repeats, each))))
            result[f"n={n} float64"] = {"bytes": sizes, "cpu_s": cpu, "gpu_s": gpu,
                                        "crossover_bytes": crossover(sizes, cpu, gpu)}
            self.rec.save()


def shape_variants(n: int, dtype: Any) -> list[Any]:
    """Both kernel shapes for (n, dtype) where both exist: the default and the other one."""
    from gpuinv import kernels

    dt = np.dtype(dtype)
    default = kernels.kernel_spec(n, dt)
    group = 1 << (n - 1).bit_length()
    if group < 8:  # the group kernel is built and tested for groups of 8, 16, 32 lanes
        return [default]
    variants = [default]
    if default.shape == "thread":
        per_warp = 32 // group
        for warps in (4, 2, 1):
            if warps * per_warp * n * (n + 1) * dt.itemsize <= 48 * 1024:
                variants.append(kernels.KernelSpec(dt, n, "group", 32 * warps, warps * per_warp, group))
                break
    else:
        for block in (128, 64, 32):
            if n * n * (block + 1) * dt.itemsize <= 48 * 1024:
                variants.append(kernels.KernelSpec(dt, n, "thread", block, block, 1))
                break
    return variants


@dataclass
class Unit:
    name: str
    run: Callable[[float], Any]


def numerics_specs(scale: Scale) -> list[Any]:
    """The kernels numerics_case launches besides the plain inverses: the rcond
    variants, the Cholesky, lower triangular and solve kernels, where they exist."""
    from gpuinv import kernels

    specs = []
    for dt in (np.float64, np.float32):
        for n in scale.numerics_n:
            for op, rcond in (("inv", True), ("chol", False), ("tril", False), ("solve", False)):
                try:
                    specs.append(kernels.kernel_spec(n, dt, op, rcond=rcond))
                except ValueError:  # above the kernel's bound, or no rcond variant: not a kernel route
                    pass
    return specs


def bench_plan(b: Bench) -> list[tuple[str, float, list[Unit]]]:
    """(phase, share of the time, units): what sets thresholds first."""
    s = b.scale
    cuda_peers = ("cupy", "torch", "cublas_matinv")

    def dev(n: int, dt: Any) -> Unit:
        return Unit(f"cupy input {np.dtype(dt).name} n={n}",
                    lambda cap: b.device_case(n, dt, cap, cuda_peers))

    first = [dev(n, dt) for dt in (np.float64, np.float32) for n in s.threshold_n]
    second = [Unit("kernel_threshold", b.kernel_threshold), Unit("shape_threshold", b.shape_threshold),
              Unit("crossover", b.numpy_crossover), Unit("route_threshold", b.route_threshold)]
    rest = [dev(n, dt) for dt in (np.float64, np.float32) for n in s.other_n]
    rest += [dev(n, dt) for n in s.complex_n for dt in (np.complex64, np.complex128)]
    rest += [Unit(f"numpy input {np.dtype(dt).name} n={n}", lambda cap, n=n, dt=dt: b.host_case(n, dt, cap))
             for dt in (np.float64, np.float32) for n in s.host_n]
    rest += [Unit(f"jax {np.dtype(dt).name} n={n}", lambda cap, n=n, dt=dt: b.jax_peer(n, dt, cap))
             for dt in (np.float64, np.float32) for n in s.threshold_n]
    rest += [Unit(f"numerics {np.dtype(dt).name} n={n}", lambda cap, n=n, dt=dt: b.numerics_case(n, dt, cap))
             for dt in (np.float64, np.float32) for n in s.numerics_n]
    return [("thresholds", 0.45, first), ("crossovers", 0.35, second), ("rest", 0.20, rest)]


def run_units(b: Bench, plan: list[tuple[str, float, list[Unit]]]) -> int:
    """Run the plan within the recorder's deadline; 3 if a sticky CUDA error ended it."""
    rec = b.rec
    shares_left = sum(share for _, share, _ in plan)
    for p, (phase, share, units) in enumerate(plan):
        phase_end = time.monotonic() + max(0.0, rec.left()) * share / shares_left
        shares_left -= share
        for i, unit in enumerate(units):
            cap = (phase_end - time.monotonic()) / (len(units) - i)
            if rec.left() <= b.scale.min_unit_s or cap < b.scale.min_unit_s:
                rec.skip(unit.name, f"out of time ({max(0.0, rec.left()):.0f} s left)")
                continue
            t0 = time.monotonic()
            try:
                unit.run(max(cap, 0.0))
            except Exception as exc:  # noqa: BLE001 - record, and stop only if the context is gone
                problem = str(exc) if isinstance(exc, StickyCudaError) else context_error()
                rec.error(f"{unit.name}: {exc!r}")
                if problem is not None:
                    rec.data["aborted"] = f"{unit.name}: the CUDA context is unusable: {problem}"
                    later = units[i + 1:] + [u for _, _, us in plan[p + 1:] for u in us]
                    for u in later:
                        rec.skip(u.name, "not run: the CUDA context was lost")
                    rec.save()
                    return 3
            log(f"[{rec.left():.0f} s left] {phase}: {unit.name} ({time.monotonic() - t0:.1f} s)")
            rec.save()
    return 0


def run_bench_section(args: argparse.Namespace, rec: Recorder, scale: Scale) -> int:
    arch = rec.data["machine"].get("compute_capability")
    model_path = args.model or (REPO / "benchmarks" / "results" / f"model_sm{arch}.json")
    model = load_model(model_path)
    rec.data["model"] = {"path": str(model_path), "records": len(model)}
    b = Bench(rec, {}, scale, args.repeats, model=model, arch=arch)
    # The kernels this section launches, compiled in parallel before any timing.
    ns = sorted({n for n in (*scale.threshold_n, *scale.other_n, *scale.complex_n, *scale.host_n,
                             *scale.kernel_n, *scale.crossover_n) if n <= 32})
    # With the shape variants dispatch never picks (shape_threshold times them).
    variants = [spec for dt in (np.float64, np.float32) for n in scale.shape_n
                for spec in shape_variants(n, dt)]
    warm_kernels(rec, None, ns, args.workers, extra=variants + numerics_specs(scale))
    try:
        measure_floors(rec, args.repeats, scale)
        log(f"floors: {rec.data['floors']}")
    except Exception as exc:  # noqa: BLE001
        rec.error(f"floors: {exc!r}")
        if (problem := context_error()) is not None:
            rec.data["aborted"] = f"floors: the CUDA context is unusable: {problem}"
            rec.save()
            return 3
    b.peers = load_peers(rec)
    log(f"peers: {rec.data['peers']}")
    return run_units(b, bench_plan(b))


# --- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import cupy

    if not cupy.cuda.is_available():
        print("gpu_check: no usable CUDA device", file=sys.stderr)
        return 2
    scale = scale_for(args.quick, args.tiny)
    commit = resolve_commit(args.commit)
    machine = machine_info(commit)
    write_json(args.out / "machine.json", machine)
    sections = SECTIONS if args.section == "all" else (args.section,)
    budgets = QUICK_BUDGET if args.quick else BUDGET
    rc = 0
    for k, section in enumerate(sections):
        _LOG[:] = [args.out / f"gpu_check-{section}.log"]
        _LOG[0].write_text("")
        # Split what is left of the budget between the sections still to run.
        left = args.budget - (time.monotonic() - start)
        share = budgets[section] / sum(budgets[s] for s in sections[k:])
        deadline = time.monotonic() + left * share - RESERVE_S
        stem, render = ("tests", render_tests) if section == "tests" else ("results", render_bench)
        rec = Recorder(args.out, deadline, stem=stem, render=render)
        rec.data["machine"] = {k2: v for k2, v in machine.items() if k2 != "nvidia_smi"}
        rec.data["args"] = {k2: str(v) for k2, v in vars(args).items()}
        rec.data["section"] = section
        rec.save()
        log(f"gpu_check {section}: {left * share:.0f} s; {_machine_line(rec.data)}")
        try:
            if section == "tests":
                code = run_tests_section(args, rec, scale)
            else:
                code = run_bench_section(args, rec, scale)
        except Exception as exc:  # noqa: BLE001 - whatever happens, the files stay valid
            rec.error(f"{section} stopped: {exc!r}")
            code = 1
        rec.data["seconds"] = time.monotonic() - start
        rec.save()
        rc = rc or code
        log(f"gpu_check {section}: done in {time.monotonic() - start:.0f} s (status {code})")
        print((args.out / f"{stem}.md").read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
