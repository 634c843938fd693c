"""The CPU engine's route choice, in one place: which method and how many threads for order n.

Read this file to know what the CPU engine runs for a given n. Each
threshold names the benchmark that set it. The engine (:mod:`.cpu`) and its
block functions look the routes up here and nowhere else.
"""

from __future__ import annotations

from .._config import config

__all__ = ["CPU_CLOSED_FORM_MAX_N", "cpu_route", "threads_for"]

# Closed forms beat LAPACK's per-matrix calls by 5-30x for n <= 4 and keep its
# accuracy (with the guard in engines/_closed_form.py); at n = 5 the 5x5
# adjugate would cost more than LAPACK (benchmarks/bench_cpu.py).
CPU_CLOSED_FORM_MAX_N = 4


def cpu_route(n: int) -> str:
    """The CPU engine's route for order n: "closed_form" or "lapack"."""
    return "closed_form" if n <= CPU_CLOSED_FORM_MAX_N else "lapack"


def threads_for(n: int) -> int:
    """Worker threads for order n (benchmarks/bench_cpu.py, threads sweep).

    * 5 <= n <= 8: LAPACK's tiny-matrix calls contend inside OpenBLAS; two
      threads ran at 0.74x of one, so these stay on one thread.
    * n >= 128: getrf is blocked and OpenBLAS threads it itself; our threads
      on top oversubscribe the cores.
    """
    if 5 <= n <= 8 or n >= 128:
        return 1
    return config.cpu_threads
