"""Every dispatched LU solve kernel instantiation (``solve_thread``), executed on the CPU.

The same harness as tests/test_kernels_emu.py (kernels.cu compiled unchanged
against the CUDA emulation header, under AddressSanitizer and UBSan, the
real launcher's grid and block, thread orders that must agree bit for bit,
exact-size buffers, the inputs checked unwritten). Results are compared bit
for bit with the host build of inverse.cuh's solve (tests/_kernel_cases.py),
which tests/test_kernels_solve_host.py holds to LAPACK's accuracy, so any
difference here is the kernel's staging, tiling or indexing. Every
instantiation runs k = 1 (b staged through shared memory), k = 2 and
k = n + 1 (b and x straight from and to global memory).

By default the representative sample of the instantiations runs (every dtype
and shape at the edges of every bound, the rcond variants) and every mutation
test; ``--emu-all`` runs the rest too (tests/_emu_base.py, tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from _emu_base import (
    Mutation,
    assert_capped_grid_same,
    assert_same_bits,
    builds,  # noqa: F401 - fixture
    check_mutation,
    mixed,
    mutants,  # noqa: F401 - fixture
    mutation_params,
    requires_emulation,
    run,
    same_bits,
    spec_params,
)
from _kernel_cases import (
    build_solve_host_lib,
    eps,
    exact_singular,
    host_solve,
    random_matrices,
    solve_backward_error,
)

import gpuinv.kernels as kernels

pytestmark = requires_emulation

SOLVE_SPECS = [s for s in kernels.instantiations() if s.op == "solve"]


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_solve_host_lib(tmp_path_factory.mktemp("emu_solve_host"))


def assert_same_as_host(host_lib, a, b, x, info):
    """The emulated kernel computed exactly what the host build of its math computes
    (NaN included: info != 0 gives the same NaN bits on both)."""
    ref, ref_info = host_solve(host_lib, a, b)
    np.testing.assert_array_equal(info, ref_info)
    assert_same_bits(x, ref)


def rhs(rng, m, n, k, dtype):
    return random_matrices(rng, m, max(n, k), dtype)[:, :n, :k].copy()


def ks(spec):
    return sorted({1, 2, spec.n + 1})


@pytest.mark.parametrize("spec", spec_params(SOLVE_SPECS))
def test_random_stack_with_partial_tile_and_capped_grid(builds, host_lib, spec):
    rng = np.random.default_rng(70 * spec.n + spec.dtype.num)
    m = 2 * spec.per_block + 3  # not a multiple of the tile
    a = random_matrices(rng, m, spec.n, spec.dtype)
    for k in ks(spec):
        b = rhs(rng, m, spec.n, k, spec.dtype)
        a_before, b_before = a.copy(), b.copy()
        x, info = run(builds, spec, a, b)
        np.testing.assert_array_equal(a, a_before)
        np.testing.assert_array_equal(b, b_before)
        np.testing.assert_array_equal(info, 0)
        assert x.shape == (m, spec.n, k)
        assert_same_as_host(host_lib, a, b, x, info)
        lapack = solve_backward_error(a, np.linalg.solve(a, b), b)
        assert np.all(solve_backward_error(a, x, b) <= 10 * np.maximum(lapack, eps(spec.dtype)))
        assert_capped_grid_same(builds, spec, a, x, info, b)


@pytest.mark.parametrize("spec", spec_params(SOLVE_SPECS))
def test_one_system_and_one_past_a_full_tile(builds, host_lib, spec):
    rng = np.random.default_rng(80 * spec.n + spec.dtype.num)
    for m in (1, spec.per_block + 1):
        a = random_matrices(rng, m, spec.n, spec.dtype)
        for k in (1, spec.n + 1):
            b = rhs(rng, m, spec.n, k, spec.dtype)
            x, info = run(builds, spec, a, b, orders=("f", "r"))
            np.testing.assert_array_equal(info, 0)
            assert_same_as_host(host_lib, a, b, x, info)


@pytest.mark.parametrize("spec", spec_params(SOLVE_SPECS))
def test_singular_nonfinite_and_identity_among_good(builds, host_lib, spec):
    rng = np.random.default_rng(90 * spec.n + spec.dtype.num)
    n, dt = spec.n, spec.dtype
    good = random_matrices(rng, 6, n, dt)
    singular, steps = exact_singular(rng, 4, n, dt)
    zero = np.zeros((1, n, n), dtype=dt)
    nonfinite = random_matrices(rng, 3, n, dt)
    for i, value in enumerate((np.nan, np.inf, -np.inf)):
        nonfinite[i, int(rng.integers(n)), int(rng.integers(n))] = value
    eye = np.broadcast_to(np.eye(n, dtype=dt), (2, n, n))
    a, expected, kinds = mixed(rng, [
        ("good", good, np.zeros(len(good), np.int32)),
        ("singular", singular, steps),
        ("singular", zero, np.array([1], np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("eye", eye, np.zeros(2, np.int32)),
    ])  # fmt: skip
    for k in ks(spec):
        b = rhs(rng, len(a), n, k, dt)
        x, info = run(builds, spec, a, b)
        np.testing.assert_array_equal(info, expected)
        assert np.all(np.isnan(x[info != 0]))
        np.testing.assert_array_equal(x[kinds == "eye"], b[kinds == "eye"])  # exact: I x = b
        assert_same_as_host(host_lib, a, b, x, info)
        good_mask = kinds == "good"
        alone, alone_info = run(builds, spec, a[good_mask], b[good_mask], orders=("f",))
        np.testing.assert_array_equal(alone_info, 0)
        assert_same_bits(x[good_mask], alone)


def test_every_dispatched_solve_instantiation_is_emulated():
    dispatched = {kernels.kernel_spec(n, dt, "solve") for dt in kernels._DTYPES
                  for n in range(1, kernels.SOLVE_MAX_N[dt] + 1)}  # fmt: skip
    assert set(SOLVE_SPECS) == dispatched


# --- mutation tests: the harness catches the solve kernel's staging bugs ----------------


def _spec(dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype), "solve")


MUTATIONS = [
    # Mutation(id, kernel, text to find (exactly once in kernels.cu), replacement, how caught,
    # k = the right-hand sides per system).
    Mutation("solve-b-stage-overruns-the-tile", _spec(np.float64, 3),
     "stage_in<T, N, B>(stage + NN * (B + 1), b + first * N, t, count * N);",
     "stage_in<T, N, B>(stage + NN * (B + 1), b + first * N, t, count * N + 1);", "asan", k=1),
    Mutation("solve-missing-syncthreads-before-x-store", _spec(np.float32, 4),
     "        if (drains) {\n            __syncthreads();\n",
     "        if (drains) {\n", "race", k=1),
    Mutation("solve-b-read-from-the-neighbour", _spec(np.complex64, 3),
     # The neighbour overwrites its column with x: what is read depends on the thread order.
     "[&](int row) { return slot(NN + row); }",
     "[&](int row) { return slot.at[(NN + row) * (B + 1) + 1 - 2 * (threadIdx.x & 1)]; }",
     "race", k=1),
    Mutation("solve-global-column-stride", _spec(np.float64, 4),
     "solve_column<T, N>(r, col, [&](int row) { return b[base + (long long)row * k + j]; }, y);",
     "solve_column<T, N>(r, col, [&](int row) { return b[base + (long long)row * (k - 1) + j]; }, y);", "wrong", k=3),
    Mutation("solve-direct-x-past-the-end", _spec(np.float32, 2),
     "for (int row = 0; row < N; ++row) x[base + (long long)row * k + j] = code",
     "for (int row = 0; row < N; ++row) x[base + (long long)row * k + j + 1] = code", "asan", k=2),
]  # fmt: skip


@pytest.mark.parametrize("mutation", mutation_params(MUTATIONS))
def test_mutated_solve_kernel_is_caught(mutants, host_lib, mutation):
    spec = mutation.spec
    rng = np.random.default_rng(9)
    m = 2 * spec.per_block + 3
    a = random_matrices(rng, m, spec.n, spec.dtype)
    b = rhs(rng, m, spec.n, mutation.k, spec.dtype)

    def is_right(x, info):
        ref, ref_info = host_solve(host_lib, a, b)
        return np.array_equal(info, ref_info) and same_bits(x, ref)

    check_mutation(mutants, mutation, a, b, is_right=is_right)
