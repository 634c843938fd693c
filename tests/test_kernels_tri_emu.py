"""Every dispatched triangular and diagonal kernel instantiation (``inv_tri_thread``,
``inv_diag_thread``), executed on the CPU.

The same harness as tests/test_kernels_emu.py and tests/test_kernels_chol_emu.py
(kernels.cu compiled unchanged against the CUDA emulation header, under
AddressSanitizer and UBSan, the real launcher's grid and block, three thread
orders that must agree bit for bit, exact-size buffers, the input checked
unwritten). Results are compared bit for bit with the host build of
triangular.cuh (tests/_kernel_cases.py), which tests/test_kernels_tri_host.py
holds to LAPACK's accuracy, so any difference here is the kernel's staging,
tiling, transposition or indexing.

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
from _kernel_cases import build_tri_host_lib, host_tri_invert, triangular_matrices

import gpuinv.kernels as kernels

pytestmark = requires_emulation

OPS = ("tril", "triu", "diag")
SPECS = [s for s in kernels.instantiations() if s.op in OPS and not s.rcond]
RC_SPECS = [s for s in kernels.instantiations() if s.op in OPS and s.rcond]


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_tri_host_lib(tmp_path_factory.mktemp("emu_tri_host"))


def outside(n, op):
    """The entries the structure does not read."""
    if op == "diag":
        return ~np.eye(n, dtype=bool)
    return np.triu(np.ones((n, n), dtype=bool), 1) if op == "tril" else np.tril(np.ones((n, n), dtype=bool), -1)


def matrices(rng, m, spec):
    """Invertible matrices of the spec's structure (zeros outside it)."""
    if spec.op == "diag":
        return triangular_matrices(rng, m, spec.n, spec.dtype, lower=True) * np.eye(spec.n, dtype=spec.dtype)
    return triangular_matrices(rng, m, spec.n, spec.dtype, lower=spec.op == "tril")


def with_garbage(rng, a, op):
    """``a`` with random values, NaN and Inf outside the structure: the kernel must not read them."""
    n = a.shape[-1]
    junk = a.copy()
    mask = outside(n, op)
    noise = (rng.standard_normal(a.shape) * 1e3).astype(a.dtype)
    noise[::2] = np.nan
    noise[1::4] = np.inf
    junk[:, mask] = noise[:, mask]
    return junk


def assert_same_as_host(host_lib, spec, a, out, info):
    """The emulated kernel computed exactly what the host build of its math computes."""
    ref, ref_info = host_tri_invert(host_lib, a, spec.op)
    np.testing.assert_array_equal(info, ref_info)
    ok = info == 0
    assert_same_bits(out[ok], ref[ok])
    assert np.all(np.isnan(out[~ok]))


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_random_stack_with_partial_tile_and_capped_grid(builds, host_lib, spec):
    rng = np.random.default_rng(40 * spec.n + spec.dtype.num + OPS.index(spec.op))
    a = matrices(rng, 2 * spec.per_block + 3, spec)
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, 0)
    assert_same_as_host(host_lib, spec, a, out, info)
    zeros = out[:, outside(spec.n, spec.op)]  # exact +0.0 outside the structure
    assert np.all(zeros == 0) and not np.any(np.signbit(zeros.real))
    assert_capped_grid_same(builds, spec, a, out, info)
    # Only the structure is read: garbage, NaN and Inf elsewhere change no bit.
    junk, junk_info = run(builds, spec, with_garbage(rng, a, spec.op), max_blocks=2, orders=("f",))
    np.testing.assert_array_equal(junk_info, 0)
    assert_same_bits(junk, out)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_one_matrix_and_one_past_a_full_tile(builds, host_lib, spec):
    rng = np.random.default_rng(50 * spec.n + spec.dtype.num + OPS.index(spec.op))
    for m in (1, spec.per_block + 1):
        a = matrices(rng, m, spec)
        out, info = run(builds, spec, a)
        np.testing.assert_array_equal(info, 0)
        assert_same_as_host(host_lib, spec, a, out, info)


@pytest.mark.parametrize("spec", spec_params(SPECS))
def test_zero_diagonal_nonfinite_and_identity_among_good(builds, host_lib, spec):
    rng = np.random.default_rng(60 * spec.n + spec.dtype.num + OPS.index(spec.op))
    n, dt = spec.n, spec.dtype
    good = matrices(rng, 6, spec)
    zero_at = matrices(rng, 4, spec)
    steps = rng.integers(n, size=4)
    zero_at[np.arange(4), steps, steps] = 0
    nonfinite = matrices(rng, 3, spec)
    for k, value in enumerate((np.nan, np.inf, -np.inf)):
        i = int(rng.integers(n))
        j = i if spec.op == "diag" else int(rng.integers(i + 1))
        nonfinite[(k, i, j) if spec.op != "triu" else (k, j, i)] = value
    eye = np.broadcast_to(np.eye(n, dtype=dt), (2, n, n))
    a, expected, kinds = mixed(rng, [
        ("good", good, np.zeros(len(good), np.int32)),
        ("zero", zero_at, (steps + 1).astype(np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("eye", eye, np.zeros(2, np.int32)),
    ])  # fmt: skip
    before = a.copy()
    out, info = run(builds, spec, a)
    np.testing.assert_array_equal(a, before)
    np.testing.assert_array_equal(info, expected)
    assert np.all(np.isnan(out[info != 0]))
    np.testing.assert_array_equal(out[kinds == "eye"], a[kinds == "eye"])  # exact: inv(I) = I
    assert_same_as_host(host_lib, spec, a, out, info)
    good_mask = kinds == "good"
    alone, alone_info = run(builds, spec, a[good_mask], orders=("f",))
    np.testing.assert_array_equal(alone_info, 0)
    assert_same_bits(out[good_mask], alone)


def test_every_dispatched_structured_instantiation_is_emulated():
    dispatched = {kernels.kernel_spec(n, dt, op) for op in OPS for dt in kernels._DTYPES
                  for n in range(1, (kernels.DIAG_MAX_N if op == "diag" else kernels.TRI_MAX_N)[dt] + 1)}  # fmt: skip
    assert set(SPECS) == dispatched


@pytest.mark.parametrize("spec", spec_params(RC_SPECS))
def test_rcond_variant(builds, host_lib, spec):
    # The same inverse and info as the plain kernel's math, and rcond as
    # gpuinv._numerics.rcond_from_inverse gives it for the matrix as read.
    from gpuinv._numerics import rcond_from_inverse

    rng = np.random.default_rng(70 * spec.n + spec.dtype.num + OPS.index(spec.op))
    n, dt = spec.n, spec.dtype
    a = matrices(rng, 12, spec)
    a[1, n - 1, n - 1] = 0  # info n: rcond 0
    a[2, 0, 0] = np.nan  # info -1: rcond NaN
    a[3] *= np.logspace(0, -9, n).astype(a.real.dtype)[None, :]  # graded: a small rcond
    big, tiny = (1e30, 1e-30) if np.finfo(dt).bits == 32 else (1e150, 1e-150)
    a[4] *= np.finfo(dt).dtype.type(big)  # the complex modulus's hypot path
    a[5] *= np.finfo(dt).dtype.type(tiny)
    junk = with_garbage(rng, a, spec.op)
    out, info, rc = run(builds, spec, junk)
    assert_same_as_host(host_lib, spec, a, out, info)
    assert info[1] == n and info[2] == -1
    real = np.finfo(dt).dtype
    assert rc.dtype == real
    want = rcond_from_inverse(a, out, info)  # a: zeros outside the structure, as read
    np.testing.assert_array_equal(np.isnan(rc), info == -1)
    np.testing.assert_array_equal(rc[info > 0], 0)
    ok = info == 0
    np.testing.assert_allclose(rc[ok], want[ok], rtol=8 * (n + 2) * np.finfo(real).eps, atol=0)
    capped, capped_info, capped_rc = run(builds, spec, junk, max_blocks=1, orders=("f",))
    np.testing.assert_array_equal(capped_info, info)
    assert_same_bits(capped_rc, rc)


def test_rcond_variants_cover_the_dispatched_structured_instantiations():
    assert {kernels.kernel_spec(s.n, s.dtype, s.op, rcond=True) for s in SPECS
            if kernels.has_rcond_variant(s.n, s.dtype, s.op)} == set(RC_SPECS)


# --- mutation tests: the harness catches the structured kernels' bugs --------------


def _spec(op, dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype), op)


MUTATIONS = [
    # Mutation(id, kernel, text to find (exactly once in kernels.cu), replacement, how caught).
    Mutation("tri-load-index-off-by-one", _spec("tril", np.float64, 4),
     "{ stage_in<T, NN, B, apart>(stage, a + first * NN,", "{ stage_in<T, NN, B, apart>(stage, a + first * NN + 1,", "asan"),
    Mutation("tri-upper-read-untransposed", _spec("triu", np.complex64, 3),
     "(LOWER ? at(row, col) : at(col, row))", "at(row, col)", "wrong"),
    Mutation("tri-upper-result-untransposed", _spec("triu", np.float32, 4),
     "(LOWER ? r[e / N][e % N] : r[e % N][e / N])", "r[e / N][e % N]", "wrong"),
    Mutation("tri-grid-stride-step", _spec("tril", np.float64, 3), "tile < tiles; tile += gridDim.x)", "tile < tiles; tile += gridDim.x + 1)",
     "wrong"),
    Mutation("tri-direct-reads-the-other-triangle", _spec("triu", np.float64, 2),
     "(LOWER ? at(row, col) : at(col, row))", "at(row, col)", "wrong"),
    Mutation("diag-missing-syncthreads", _spec("diag", np.float32, 5),
     "        fill(stage, t, first, count);\n        __syncthreads();\n", "        fill(stage, t, first, count);\n", "race"),
    Mutation("diag-reads-off-the-diagonal", _spec("diag", np.complex128, 3),
     "return row == col ? at(row, col) : make_zero<T>();", "return row == col ? at(row, (col + 1) % N) : make_zero<T>();",
     "wrong"),
    Mutation("diag-direct-store-past-the-matrix", _spec("diag", np.float32, 1),
     "{ out[i * NN + e] = v; }", "{ out[i * NN + e + 1] = v; }", "asan"),
]  # fmt: skip


@pytest.mark.parametrize("mutation", mutation_params(MUTATIONS))
def test_mutated_structured_kernel_is_caught(mutants, host_lib, mutation):
    spec = mutation.spec
    rng = np.random.default_rng(8)
    # Garbage outside the structure, so that reading it shows.
    a = with_garbage(rng, matrices(rng, 2 * spec.per_block + 3, spec), spec.op)

    def is_right(out, info):
        ref, ref_info = host_tri_invert(host_lib, a, spec.op)
        return np.array_equal(info, ref_info) and same_bits(out, ref)

    check_mutation(mutants, mutation, a, is_right=is_right)
