"""Every dispatched CUDA kernel instantiation, executed on the CPU.

tests/_cuda_emu.py builds gpuinv/kernels/kernels.cu unchanged against a CUDA
emulation header (a fiber per CUDA thread, block barriers, lockstep warp
collectives, NaN-poisoned shared memory bounded by AddressSanitizer) and
launches it with the grid and block of the real launcher, in three thread
orders that must agree bit for bit. Results are compared bit for bit with
the host build of the same per-matrix math (tests/_kernel_cases.py), which
tests/test_kernels_host.py holds to LAPACK's accuracy: so any difference
here is the kernel's staging, tiling, indexing or warp choreography.

The mutation tests at the end alter a copy of kernels.cu in the ways real
kernel bugs look (an off-by-one in a staging index, a wrong shuffle source,
a missing barrier, a barrier only some lanes reach, a grid-stride step) and
check that the harness catches each one.

By default the representative sample of the instantiations runs (every dtype
and shape at the edges of every bound, the rcond variants) and every mutation
test; ``--emu-all`` runs the rest too (tests/_emu_base.py, tests/conftest.py).
"""

from __future__ import annotations

import _cuda_emu
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
    passes,
    requires_emulation,
    run,
    same_bits,
    spec_params,
    tile_count,
)
from _kernel_cases import backward_error, build_host_lib, eps, exact_singular, host_invert, random_matrices

import gpuinv.kernels as kernels

pytestmark = requires_emulation

# The general inverse's instantiations; the Cholesky kernel's run in
# tests/test_kernels_chol_emu.py against their own host build. The rcond
# variants (the same kernels with RC) run in the rcond tests below.
SPECS = [s for s in kernels.instantiations() if s.op == "inv" and not s.rcond]
RC_SPECS = [s for s in kernels.instantiations() if s.op == "inv" and s.rcond]


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_host_lib(tmp_path_factory.mktemp("emu_host"))


def assert_same_as_host(host_lib, a, out, info):
    """The emulated kernel computed exactly what the host build of its math computes."""
    ref, ref_info = host_invert(host_lib, a)
    np.testing.assert_array_equal(info, ref_info)
    ok = info == 0
    assert_same_bits(out[ok], ref[ok])
    assert np.all(np.isnan(out[info == -1]))


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_random_stack_with_partial_tile_and_capped_grid(builds, host_lib, spec):
    rng = np.random.default_rng(10 * spec.n + spec.dtype.num)
    a = random_matrices(rng, tile_count(spec), spec.n, spec.dtype)
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, 0)
    assert_same_as_host(host_lib, a, out, info)
    # Accuracy in its own right, not only agreement with the host build.
    assert np.all(backward_error(a, out) <= 100 * spec.n * eps(spec.dtype))
    assert_capped_grid_same(builds, spec, a, out, info)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_one_matrix_and_one_past_a_full_tile(builds, host_lib, spec):
    rng = np.random.default_rng(20 * spec.n + spec.dtype.num)
    for m in (1, spec.per_block + 1):
        a = random_matrices(rng, m, spec.n, spec.dtype)
        out, info = run(builds, spec, a)
        np.testing.assert_array_equal(info, 0)
        assert_same_as_host(host_lib, a, out, info)


def special_stack(rng, spec):
    """Good matrices mixed with singular, non-finite and permutation matrices.

    Returns the stack, the expected info and the indices of each kind.
    """
    n, dtype = spec.n, spec.dtype
    good = random_matrices(rng, 6, n, dtype)
    singular, steps = exact_singular(rng, 3, n, dtype)
    zero_col = random_matrices(rng, 1, n, dtype)
    c = int(rng.integers(n))
    zero_col[0, :, c] = 0  # stays zero under elimination: first zero pivot at step c + 1
    zero = np.zeros((1, n, n), dtype=dtype)
    nonfinite = random_matrices(rng, 3, n, dtype)
    for k, value in enumerate((np.nan, np.inf, -np.inf)):
        i, j = rng.integers(n, size=2)
        nonfinite[k, i, j] = value
    if dtype.kind == "c":
        nonfinite[2, 0, 0] = complex(1.0, np.nan)
    perms = np.zeros((2, n, n), dtype=dtype)
    for k in range(2):
        perms[k, np.arange(n), rng.permutation(n)] = 1
    return mixed(rng, [
        ("good", good, np.zeros(len(good), np.int32)),
        ("singular", singular, steps),
        ("singular", zero_col, np.array([c + 1], np.int32)),
        ("singular", zero, np.array([1], np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("perm", perms, np.zeros(len(perms), np.int32)),
    ])  # fmt: skip


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_singular_nonfinite_and_permutations_among_good(builds, host_lib, spec):
    rng = np.random.default_rng(30 * spec.n + spec.dtype.num)
    a, expected, kinds = special_stack(rng, spec)
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(out[kinds == "nonfinite"]))
    perm = kinds == "perm"
    np.testing.assert_array_equal(out[perm], np.swapaxes(a[perm], -1, -2))  # exact: P^-1 = P^T
    assert_same_as_host(host_lib, a, out, info)
    # Neighbours unchanged: the good matrices alone give the same bits.
    good = kinds == "good"
    alone, alone_info = run(builds, spec, a[good], orders=("f",))
    np.testing.assert_array_equal(alone_info, 0)
    assert_same_bits(out[good], alone)


def test_every_dispatched_instantiation_is_emulated():
    # The parametrization above is exactly what dispatch can select.
    dispatched = {kernels.kernel_spec(n, dt) for dt in kernels._DTYPES for n in range(1, kernels.KERNEL_MAX_N[dt] + 1)}
    assert set(SPECS) == dispatched
    assert {s.shape for s in SPECS} == {"thread", "group"}


# --- the rcond variants ------------------------------------------------------------


def rcond_stack(rng, spec):
    """special_stack's kinds plus graded conditions (1e2 to 1e15, and past 1/eps) and
    matrices scaled to the edges of the range (the modulus's hypot path for complex)."""
    a, expected, kinds = special_stack(rng, spec)
    n, dtype = spec.n, spec.dtype
    graded = random_matrices(rng, 5, n, dtype)
    for k, cond in enumerate((1e2, 1e6, 1e10, 1e15, 1e20)):
        graded[k] *= np.logspace(0, -np.log10(cond), n).astype(graded.real.dtype)[None, :]
    big, tiny = (1e30, 1e-30) if np.finfo(dtype).bits == 32 or dtype == np.complex64 else (1e150, 1e-150)
    scaled = random_matrices(rng, 2, n, dtype)
    scaled[0] *= dtype.type(big)
    scaled[1] *= dtype.type(tiny)
    stack = np.concatenate([a, graded, scaled])
    info = np.concatenate([expected, np.zeros(len(graded) + len(scaled), np.int32)])
    return stack, info


def assert_rcond(spec, a, out, info, rc):
    """rcond is gpuinv._numerics.rcond_from_inverse's, computed in NumPy from the same
    A and X, to a few ulps per term (the kernel sums in its own order and takes the
    complex modulus through an approximate square root)."""
    from gpuinv._numerics import rcond_from_inverse

    real = np.finfo(spec.dtype).dtype
    assert rc.dtype == real and rc.shape == info.shape
    want = rcond_from_inverse(a, out, info)
    np.testing.assert_array_equal(np.isnan(rc), info == -1)
    np.testing.assert_array_equal(rc[info > 0], 0)
    ok = info == 0
    np.testing.assert_allclose(rc[ok], want[ok], rtol=8 * (spec.n + 2) * eps(real), atol=0)


@pytest.mark.parametrize("spec", spec_params(RC_SPECS))
def test_rcond_variant(builds, host_lib, spec):
    rng = np.random.default_rng(40 * spec.n + spec.dtype.num)
    a, expected = rcond_stack(rng, spec)
    before = a.copy()
    out, info, rc = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    assert_same_as_host(host_lib, a, out, info)  # out and info: the plain kernel's math, bit for bit
    np.testing.assert_array_equal(info[expected != 0], expected[expected != 0])
    assert_rcond(spec, a, out, info, rc)
    # The condition numbers of the well-conditioned ones, as NumPy states them.
    good = (info == 0) & (rc > 1e-3)
    with np.errstate(all="ignore"):
        cond = np.linalg.cond(a[good].astype(np.complex128 if spec.dtype.kind == "c" else np.float64), 1)
    np.testing.assert_allclose(rc[good], 1 / cond, rtol=1e5 * eps(np.finfo(spec.dtype).dtype))
    # The grid-stride loop and a partial tile: the same bits.
    m = min(len(a), spec.per_block + 1)
    capped, capped_info, capped_rc = run(builds, spec, a[:m], max_blocks=1, orders=("f",))
    np.testing.assert_array_equal(capped_info, info[:m])
    assert_same_bits(capped_rc, rc[:m])


def test_rcond_variants_cover_the_dispatched_instantiations():
    assert {kernels.kernel_spec(s.n, s.dtype, rcond=True) for s in SPECS
            if kernels.has_rcond_variant(s.n, s.dtype)} == set(RC_SPECS)


# --- mutation tests: the harness catches the bugs it exists for ----------------


def _spec(dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype))


MUTATIONS = [
    # Mutation(id, kernel, text to find (exactly once in kernels.cu), replacement,
    # how it is caught: _emu_base.Mutation). "wrong": runs, but not the host build's bits.
    Mutation("thread-load-index-off-by-one", _spec(np.float64, 4),
     "{ stage_in<T, NN, B, apart>(stage, a + first * NN,", "{ stage_in<T, NN, B, apart>(stage, a + first * NN + 1,",
     "asan"),
    Mutation("thread-stage-slot-off-by-one", _spec(np.float32, 3),
     "return Op::load([&](int p, int q) { return slot(p * N + q); }, row, col);",
     "return Op::load([&](int p, int q) { return slot.at[(p * N + q) * (B + 1) + 1]; }, row, col);", "race"),
    Mutation("thread-missing-syncthreads", _spec(np.float64, 3),
     "        fill(stage, t, first, count);\n        __syncthreads();\n", "        fill(stage, t, first, count);\n", "race"),
    Mutation("thread-grid-stride-step", _spec(np.float64, 3),
     "tile < tiles; tile += gridDim.x) {", "tile < tiles; tile += gridDim.x + 1) {", "wrong"),
    Mutation("thread-direct-load-past-the-matrix", _spec(np.float32, 2),
     "{ return a[i * NN + p * N + q]; }", "{ return a[i * NN + p * N + q + 1]; }", "asan"),
    Mutation("thread-direct-store-past-the-matrix", _spec(np.complex64, 1),
     "{ out[i * NN + e] = v; }", "{ out[i * NN + e + 1] = v; }", "asan"),
    Mutation("group-pivot-row-read-one-slot-off", _spec(np.float64, 16),
     "r[j - 1] = fms(r[j], l, prow[j]);", "r[j - 1] = fms(r[j], l, prow[j - 1]);", "wrong"),
    Mutation("group-warp-reduction-min-for-max", _spec(np.float32, 17),
     "top_lo = __reduce_max_sync(", "top_lo = __reduce_min_sync(", "memory"),
    Mutation("group-wrong-butterfly-mask", _spec(np.float32, 12),
     "R other = shfl_xor(best, off, G);", "R other = shfl_xor(best, off ^ 1, G);", "memory"),
    Mutation("group-missing-syncwarp-before-the-permutation-is-read", _spec(np.float64, 16),
     "        __syncwarp();\n        const int col_of_mine", "        const int col_of_mine", "memory"),
    Mutation("group-syncwarp-only-in-lanes-with-a-row", _spec(np.float64, 12),
     "        __syncwarp();  // every lane has read U", "        if (has_row) __syncwarp();  // every lane has read U",
     "divergent"),
    Mutation("group-store-row-index-rotated", _spec(np.complex64, 9),
     "dst[i * N] = nonfinite", "dst[((i + 1) % N) * N] = nonfinite", "wrong"),
    Mutation("group-info-index-off-by-one", _spec(np.float64, 16), "info[first + grp] =", "info[first + grp + 1] =", "asan"),
]  # fmt: skip


@pytest.mark.parametrize("mutation", mutation_params(MUTATIONS))
def test_mutated_kernel_is_caught(mutants, host_lib, mutation):
    spec = mutation.spec
    rng = np.random.default_rng(7)
    a = random_matrices(rng, tile_count(spec), spec.n, spec.dtype)

    def is_right(out, info):
        ref, ref_info = host_invert(host_lib, a)
        return np.array_equal(info, ref_info) and same_bits(out, ref)

    check_mutation(mutants, mutation, a, is_right=is_right)


# The control for the mutation tests: the same procedure on an exact copy passes.
UNMUTATED = Mutation("unmutated-copy", _spec(np.float64, 12), '#include "inverse.cuh"', '#include "inverse.cuh"', "none")


@pytest.mark.parametrize("mutation", mutation_params([UNMUTATED]))
def test_unmutated_copy_runs_clean(mutants, host_lib, mutation):
    spec = mutation.spec
    assert mutation.source() == (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    a = random_matrices(np.random.default_rng(7), tile_count(spec), spec.n, spec.dtype)
    out, info = _cuda_emu.run(spec, a, exe=mutants[mutation.name], max_blocks=2)
    assert_same_as_host(host_lib, a, out, info)


RC_MUTATIONS = [
    # The rcond variants' own code. "wrong": rcond is not rcond_from_inverse's (assert_rcond fails).
    Mutation("thread-rcond-index-off-by-one", kernels.kernel_spec(3, np.float64, rcond=True),
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] =",
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i + 1] =", "asan"),
    Mutation("thread-rcond-norm-after-the-inverse", kernels.kernel_spec(2, np.complex64, rcond=True),
     # ||A|| taken from r after the inversion: ||X||.
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] = rcond_of(code, a_norm,",
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] = rcond_of(code, one_norm<T, N>(r),", "wrong"),
    Mutation("group-rcond-a-norm-of-one-column", kernels.kernel_spec(12, np.float32, rcond=True),
     "a_norm = max_keep_nan(a_norm, shfl_xor(a_norm, off, G));", "", "wrong"),
    Mutation("group-rcond-x-norm-from-the-wrong-lane", kernels.kernel_spec(20, np.complex128, rcond=True),
     "x_norm = max_keep_nan(x_norm, shfl_xor(x_norm, off, G));",
     "x_norm = max_keep_nan(x_norm, shfl_xor(x_sum, off ^ 1, G));", "wrong"),
]  # fmt: skip


@pytest.mark.parametrize("mutation", mutation_params(RC_MUTATIONS))
def test_mutated_rcond_is_caught(mutants, host_lib, mutation):
    spec = mutation.spec
    rng = np.random.default_rng(9)
    a = random_matrices(rng, tile_count(spec), spec.n, spec.dtype)
    a[::3] *= np.logspace(0, -3, spec.n).astype(a.real.dtype)  # columns of unequal norm
    check_mutation(mutants, mutation, a, is_right=lambda out, info, rc: passes(assert_rcond, spec, a, out, info, rc))
