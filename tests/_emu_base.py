"""The shared base of the emulation test files (tests/test_kernels*_emu.py).

Each family file (the LU inverse, Cholesky, triangular and diagonal, LU
solve) keeps its table entry (which instantiations, its host build of the
math, its mutations) and its own expectations; this module holds what they
share:

- the test ids of the instantiations, and their parametrization: the sample
  (:func:`_cuda_emu.sample`: every family, dtype and shape, the edges of
  every bound, the rcond variants) runs by default, the rest is marked
  ``exhaustive`` and runs with ``--emu-all`` (tests/conftest.py);
- the build fixtures: a module's executables are built once, in parallel,
  for exactly the instantiations its selected tests use (:func:`builds`),
  and its mutations all at once (:func:`mutants`);
- bit-for-bit comparison, the capped-grid check, mixed stacks of kinds;
- the mutation machinery: a :class:`Mutation` is data (the kernel, the text
  to find in kernels.cu, which must occur exactly once, its replacement, how
  the harness must catch it), and :func:`check_mutation` runs it.

Import the fixtures into a family file (``from _emu_base import builds,
mutants``) so pytest finds them there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import _cuda_emu
import numpy as np
import pytest

import gpuinv.kernels as kernels

#: Skip a whole family file where g++ cannot build with the sanitizers.
requires_emulation = pytest.mark.skipif(_cuda_emu.available() is not None, reason=str(_cuda_emu.available()))


def spec_id(spec: kernels.KernelSpec) -> str:
    return f"{spec.dtype.name}-n{spec.n}-{spec.kind}"


def spec_params(specs: Iterable[kernels.KernelSpec]) -> list:
    """``specs`` as pytest parameters: those outside the sample marked ``exhaustive``."""
    sample = set(_cuda_emu.sample())
    return [pytest.param(s, id=spec_id(s), marks=() if s in sample else pytest.mark.exhaustive) for s in specs]


# --- builds ---------------------------------------------------------------------------


def _selected(request: pytest.FixtureRequest, name: str) -> list:
    """The values of parameter ``name`` in the selected tests of the requesting module."""
    seen: dict = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and name in callspec.params:
            seen.setdefault(callspec.params[name], None)
    return list(seen)


@pytest.fixture(scope="module")
def builds(request) -> dict[kernels.KernelSpec, _cuda_emu.Program]:
    """The executables of every instantiation that the module's selected tests
    use (parameter ``spec``), built once, in parallel, and cached on disk."""
    return _cuda_emu.build_all(_selected(request, "spec"))


def run(builds, spec, a, b=None, **kwargs):
    """Launch ``spec`` from ``builds`` on ``a`` (and the right-hand sides ``b``)."""
    return _cuda_emu.run(spec, a, b=b, exe=builds[spec], **kwargs)


# --- comparing -------------------------------------------------------------------------


def bits(x: np.ndarray) -> np.dtype:
    """The unsigned integer type of ``x``'s real parts: its values compared bit for bit."""
    return np.dtype(f"u{x.dtype.itemsize // (2 if x.dtype.kind == 'c' else 1)}")


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    return x.shape == y.shape and np.array_equal(x.view(bits(x)), y.view(bits(y)))


def assert_same_bits(x: np.ndarray, y: np.ndarray) -> None:
    np.testing.assert_array_equal(x.view(bits(x)), y.view(bits(y)))


def assert_capped_grid_same(builds, spec, a, out, info, b=None) -> None:
    """One and two blocks: the grid-stride loop makes several trips, and every
    trip must give the same bits as one block per tile."""
    for cap in (1, 2):
        capped, capped_info = run(builds, spec, a, b, max_blocks=cap, orders=("f", "s2"))
        np.testing.assert_array_equal(capped_info, info)
        assert_same_bits(capped, out)


def tile_count(spec: kernels.KernelSpec) -> int:
    """Matrices for the partial-last-tile stack: two full tiles and a part, fewer at the larger n."""
    full = spec.per_block
    return 2 * full + 3 if spec.n <= 16 else full + 3


def mixed(rng, parts: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interleave ``(kind, matrices, expected info)`` parts in a random order.

    Returns the stack, the expected info and each matrix's kind.
    """
    stack = np.concatenate([p[1] for p in parts])
    expected = np.concatenate([p[2] for p in parts])
    kinds = np.concatenate([[p[0]] * len(p[1]) for p in parts])
    order = rng.permutation(len(stack))
    return stack[order], expected[order], kinds[order]


# --- mutation tests ----------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """A copy of kernels.cu with one change, and how the harness must catch it.

    ``original`` must occur exactly once in kernels.cu; ``mutated`` replaces
    it. ``caught``: ``"asan"`` (AddressSanitizer stops the run), ``"race"``
    (the thread orders disagree), ``"divergent"`` (lanes reach different
    collectives), ``"memory"`` (AddressSanitizer or UBSan stops a run whose
    wrong pivot or unsynchronized read sends a store out of bounds) or
    ``"wrong"`` (it runs, but the family's expectation must fail). ``k``:
    right-hand sides, for the solve kernel.
    """

    name: str
    spec: kernels.KernelSpec
    original: str
    mutated: str
    caught: str
    k: int = 0

    def source(self) -> str:
        return (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text().replace(self.original, self.mutated)


CAUGHT_BY: dict[str, Callable[[_cuda_emu.EmulationError], bool]] = {
    "asan": lambda exc: "ERROR: AddressSanitizer" in exc.stderr,
    "race": lambda exc: exc.returncode == 4 and "differs between thread orders" in exc.stderr,
    "divergent": lambda exc: exc.returncode == 3 and "divergent warp" in exc.stderr,
    "memory": lambda exc: "ERROR: AddressSanitizer" in exc.stderr or "runtime error:" in exc.stderr,
}


def mutation_params(mutations: Iterable[Mutation]) -> list:
    return [pytest.param(m, id=m.name) for m in mutations]


def passes(check: Callable[..., None], *args) -> bool:
    """Whether ``check(*args)`` passes (raises no AssertionError)."""
    try:
        check(*args)
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def mutants(request) -> dict[str, _cuda_emu.Program]:
    """The mutated kernels of the module's selected tests (parameter ``mutation``),
    all built at once into a few executables (one per core), cached by content.
    A mutation whose text is not unique is left out: its test fails on that."""
    source = (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    chosen = [m for m in _selected(request, "mutation") if source.count(m.original) == 1]
    if not chosen:
        return {}
    jobs = max(1, len(os.sched_getaffinity(0)))
    size = math.ceil(len(chosen) / jobs)
    chunks = [chosen[i:i + size] for i in range(0, len(chosen), size)]
    module = request.module.__name__.removeprefix("test_kernels_").removesuffix("_emu") or "inv"
    exes = _cuda_emu.build_units(
        {f"mut-{module}{i}": [_cuda_emu.Unit(m.spec, m.source()) for m in chunk] for i, chunk in enumerate(chunks)}
    )
    return {m.name: _cuda_emu.Program(exes[f"mut-{module}{i}"], j, m.spec.name_expression)
            for i, chunk in enumerate(chunks) for j, m in enumerate(chunk)}  # fmt: skip


def check_mutation(mutants, mutation: Mutation, a, b=None, *, is_right: Callable[..., bool]) -> None:
    """Run ``mutation``'s kernel on ``a`` (and ``b``) with the grid capped at 2 blocks
    and require it caught as ``mutation.caught``. For ``"wrong"``, ``is_right(*results)``
    (the launch's out, info and rcond) must be False."""
    name = mutation.name
    source = (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    assert source.count(mutation.original) == 1, f"{name}: the text to mutate is no longer unique in kernels.cu"
    program = mutants[name]
    if mutation.caught == "wrong":
        results = _cuda_emu.run(mutation.spec, a, b=b, exe=program, max_blocks=2)
        assert not is_right(*results), f"{name}: the mutated kernel gave the right results"
        return
    with pytest.raises(_cuda_emu.EmulationError) as caught:
        _cuda_emu.run(mutation.spec, a, b=b, exe=program, max_blocks=2)
    assert CAUGHT_BY[mutation.caught](caught.value), (
        f"{name}: expected to be caught as {mutation.caught}, got:\n{caught.value.stderr}"
    )
