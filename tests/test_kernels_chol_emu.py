"""Every dispatched Cholesky kernel instantiation (``inv_chol_thread``), executed on the CPU.

The same harness as tests/test_kernels_emu.py (kernels.cu compiled unchanged
against the CUDA emulation header, under AddressSanitizer and UBSan, the
real launcher's grid and block, three thread orders that must agree bit for
bit, exact-size buffers, the input checked unwritten). Results are compared
bit for bit with the host build of cholesky.cuh (tests/_kernel_cases.py),
which tests/test_kernels_chol_host.py holds to LAPACK's accuracy, so any
difference here is the kernel's staging, tiling or indexing.

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
    backward_error,
    build_chol_host_lib,
    eps,
    host_chol_invert,
    indefinite_at,
    spd_matrices,
)

import gpuinv.kernels as kernels

pytestmark = requires_emulation

CHOL_SPECS = [s for s in kernels.instantiations() if s.op == "chol" and not s.rcond]
RC_CHOL_SPECS = [s for s in kernels.instantiations() if s.op == "chol" and s.rcond]


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_chol_host_lib(tmp_path_factory.mktemp("emu_chol_host"))


def assert_same_as_host(host_lib, a, out, info):
    """The emulated kernel computed exactly what the host build of its math computes
    (NaN included: info != 0 gives the same NaN bits on both)."""
    ref, ref_info = host_chol_invert(host_lib, a)
    np.testing.assert_array_equal(info, ref_info)
    ok = info == 0
    assert_same_bits(out[ok], ref[ok])
    assert np.all(np.isnan(out[~ok]))


def with_garbage_upper(rng, a):
    """``a`` with random values and NaN above the diagonal (and, complex, in the
    diagonal's imaginary part): the kernel reads neither."""
    n = a.shape[-1]
    junk = a.copy()
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    noise = (rng.standard_normal(a.shape) * 1e3).astype(a.dtype)
    noise[:, 0, -1] = np.nan
    junk[:, upper] = noise[:, upper]
    if a.dtype.kind == "c":
        idx = np.arange(n)
        junk.imag[:, idx, idx] = rng.standard_normal((len(a), n))
        junk.imag[::2, 0, 0] = np.nan
    return junk


@pytest.mark.parametrize("spec", spec_params(CHOL_SPECS))
def test_random_stack_with_partial_tile_and_capped_grid(builds, host_lib, spec):
    rng = np.random.default_rng(40 * spec.n + spec.dtype.num)
    a = spd_matrices(rng, 2 * spec.per_block + 3, spec.n, spec.dtype)
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, 0)
    assert_same_as_host(host_lib, a, out, info)
    assert np.all(backward_error(a, out) <= 100 * spec.n * eps(spec.dtype))
    np.testing.assert_array_equal(out, np.conj(np.swapaxes(out, -1, -2)))  # exactly Hermitian
    assert_capped_grid_same(builds, spec, a, out, info)
    # Only the lower triangle is read: garbage above it changes no bit.
    junk, junk_info = run(builds, spec, with_garbage_upper(rng, a), max_blocks=2, orders=("f",))
    np.testing.assert_array_equal(junk_info, 0)
    assert_same_bits(junk, out)


@pytest.mark.parametrize("spec", spec_params(CHOL_SPECS))
def test_one_matrix_and_one_past_a_full_tile(builds, host_lib, spec):
    rng = np.random.default_rng(50 * spec.n + spec.dtype.num)
    for m in (1, spec.per_block + 1):
        a = spd_matrices(rng, m, spec.n, spec.dtype, cond=1e3 if spec.n > 1 else None)
        out, info = run(builds, spec, a)
        np.testing.assert_array_equal(info, 0)
        assert_same_as_host(host_lib, a, out, info)


@pytest.mark.parametrize("spec", spec_params(CHOL_SPECS))
def test_indefinite_nonfinite_and_identity_among_good(builds, host_lib, spec):
    rng = np.random.default_rng(60 * spec.n + spec.dtype.num)
    n, dt = spec.n, spec.dtype
    good = spd_matrices(rng, 6, n, dt)
    bad, steps = indefinite_at(rng, 4, n, dt)
    zero = np.zeros((1, n, n), dtype=dt)
    nonfinite = spd_matrices(rng, 3, n, dt)
    for k, value in enumerate((np.nan, np.inf, -np.inf)):
        i = int(rng.integers(n))
        j = int(rng.integers(i + 1))
        nonfinite[k, i, j] = value
    eye = np.broadcast_to(np.eye(n, dtype=dt), (2, n, n))
    a, expected, kinds = mixed(rng, [
        ("good", good, np.zeros(len(good), np.int32)),
        ("indefinite", bad, steps),
        ("indefinite", zero, np.array([1], np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("eye", eye, np.zeros(2, np.int32)),
    ])  # fmt: skip
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(out[info != 0]))
    np.testing.assert_array_equal(out[kinds == "eye"], a[kinds == "eye"])  # exact: inv(I) = I
    assert_same_as_host(host_lib, a, out, info)
    good_mask = kinds == "good"
    alone, alone_info = run(builds, spec, a[good_mask], orders=("f",))
    np.testing.assert_array_equal(alone_info, 0)
    assert_same_bits(out[good_mask], alone)


def test_every_dispatched_cholesky_instantiation_is_emulated():
    dispatched = {kernels.kernel_spec(n, dt, "chol") for dt in kernels._DTYPES
                  for n in range(1, kernels.CHOL_MAX_N[dt] + 1)}  # fmt: skip
    assert set(CHOL_SPECS) == dispatched


def hermitian_as_read(a):
    """The Hermitian matrix the kernel reads: the lower triangle, the real part of
    the diagonal, the strict upper triangle the conjugate mirror."""
    low = np.tril(a, -1)
    d = np.real(np.diagonal(a, axis1=-2, axis2=-1))
    n = a.shape[-1]
    full = low + np.conj(np.swapaxes(low, -1, -2))
    full[..., np.arange(n), np.arange(n)] = d
    return full


@pytest.mark.parametrize("spec", spec_params(RC_CHOL_SPECS))
def test_rcond_variant(builds, host_lib, spec):
    from gpuinv._numerics import rcond_from_inverse

    rng = np.random.default_rng(70 * spec.n + spec.dtype.num)
    n, dt = spec.n, spec.dtype
    parts = [spd_matrices(rng, 4, n, dt)]
    if n > 1:
        parts += [spd_matrices(rng, 1, n, dt, cond=c) for c in (1e2, 1e6, 1e12)]
    bad, _ = indefinite_at(rng, 2, n, dt)
    nonfinite = spd_matrices(rng, 1, n, dt)
    nonfinite[0, n - 1, 0] = np.nan
    big, tiny = (1e30, 1e-30) if np.finfo(dt).bits == 32 else (1e150, 1e-150)
    scaled = spd_matrices(rng, 2, n, dt)
    scaled[0] *= np.finfo(dt).dtype.type(big)
    scaled[1] *= np.finfo(dt).dtype.type(tiny)
    a = with_garbage_upper(rng, np.concatenate(parts + [bad, nonfinite, scaled]))
    before = a.copy()
    out, info, rc = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    assert_same_as_host(host_lib, a, out, info)  # out and info: the plain kernel's math, bit for bit
    real = np.finfo(dt).dtype
    assert rc.dtype == real
    want = rcond_from_inverse(hermitian_as_read(a), out, info)
    np.testing.assert_array_equal(np.isnan(rc), info == -1)
    np.testing.assert_array_equal(rc[info > 0], 0)
    ok = info == 0
    np.testing.assert_allclose(rc[ok], want[ok], rtol=8 * (n + 2) * eps(real), atol=0)
    capped, capped_info, capped_rc = run(builds, spec, a, max_blocks=1, orders=("f",))
    np.testing.assert_array_equal(capped_info, info)
    assert_same_bits(capped_rc, rc)


def test_rcond_variants_cover_the_dispatched_cholesky_instantiations():
    assert {kernels.kernel_spec(s.n, s.dtype, "chol", rcond=True) for s in CHOL_SPECS
            if kernels.has_rcond_variant(s.n, s.dtype, "chol")} == set(RC_CHOL_SPECS)


# --- mutation tests: the harness catches the Cholesky kernel's staging bugs ------------


def _spec(dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype), "chol")


MUTATIONS = [
    # Mutation(id, kernel, text to find (exactly once in kernels.cu), replacement, how caught).
    Mutation("chol-load-index-off-by-one", _spec(np.float64, 4),
     "{ stage_in<T, NN, B, apart>(stage, a + first * NN,", "{ stage_in<T, NN, B, apart>(stage, a + first * NN + 1,",
     "asan"),
    Mutation("chol-missing-syncthreads", _spec(np.float32, 3),
     "        fill(stage, t, first, count);\n        __syncthreads();\n", "        fill(stage, t, first, count);\n",
     "race"),
    Mutation("chol-reads-the-upper-triangle", _spec(np.complex64, 3),
     "return col <= row ? at(row, col) : make_zero<T>();", "return col <= row ? at(col, row) : make_zero<T>();", "wrong"),
    Mutation("chol-grid-stride-step", _spec(np.float64, 3), "tile < tiles; tile += gridDim.x)", "tile < tiles; tile += gridDim.x + 1)", "wrong"),
    Mutation("chol-store-index-off-by-one", _spec(np.complex128, 2),
     "dst[g] = stage[(g - mat * NN) * (B + 1) + mat];", "dst[g] = stage[(g - mat * NN) * (B + 1) + mat + 1];",
     "wrong"),
]  # fmt: skip


@pytest.mark.parametrize("mutation", mutation_params(MUTATIONS))
def test_mutated_cholesky_kernel_is_caught(mutants, host_lib, mutation):
    spec = mutation.spec
    rng = np.random.default_rng(8)
    # Garbage above the diagonal, so that reading it shows.
    a = with_garbage_upper(rng, spd_matrices(rng, 2 * spec.per_block + 3, spec.n, spec.dtype))

    def is_right(out, info):
        ref, ref_info = host_chol_invert(host_lib, a)
        return np.array_equal(info, ref_info) and same_bits(out, ref)

    check_mutation(mutants, mutation, a, is_right=is_right)
