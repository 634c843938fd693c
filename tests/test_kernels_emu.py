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
"""

from __future__ import annotations

import shutil

import _cuda_emu
import numpy as np
import pytest
from _kernel_cases import backward_error, build_host_lib, eps, exact_singular, host_invert, random_matrices

import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(_cuda_emu.available() is not None, reason=str(_cuda_emu.available()))

# The general inverse's instantiations; the Cholesky kernel's run in
# tests/test_kernels_chol_emu.py against their own host build. The rcond
# variants (the same kernels with RC) run in the rcond tests below.
SPECS = [s for s in kernels.instantiations() if s.op == "inv" and not s.rcond]
RC_SPECS = [s for s in kernels.instantiations() if s.op == "inv" and s.rcond]


def spec_id(spec: kernels.KernelSpec) -> str:
    return f"{spec.dtype.name}-n{spec.n}-{spec.kind}"


@pytest.fixture(scope="session")
def builds():
    """Every dispatched instantiation, built in parallel once per session (and cached on disk)."""
    return _cuda_emu.build_all(SPECS)


@pytest.fixture(scope="session")
def rc_builds():
    return _cuda_emu.build_all(RC_SPECS)


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_host_lib(tmp_path_factory.mktemp("emu_host"))


def run(builds, spec, a, **kwargs):
    return _cuda_emu.run(spec, a, exe=builds[spec], **kwargs)


def assert_same_as_host(host_lib, a, out, info):
    """The emulated kernel computed exactly what the host build of its math computes."""
    ref, ref_info = host_invert(host_lib, a)
    np.testing.assert_array_equal(info, ref_info)
    ok = info == 0
    np.testing.assert_array_equal(out[ok].view(_bits(out)), ref[ok].view(_bits(ref)))
    assert np.all(np.isnan(out[info == -1]))


def _bits(x: np.ndarray) -> np.dtype:
    return np.dtype(f"u{x.dtype.itemsize // (2 if x.dtype.kind == 'c' else 1)}")


def tile_count(spec: kernels.KernelSpec) -> int:
    """Matrices for the partial-last-tile stack: two full tiles and a part, fewer at the larger n."""
    full = spec.per_block
    return 2 * full + 3 if spec.n <= 16 else full + 3


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
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
    # One and two blocks: the grid-stride loop makes several trips, and
    # every trip must give the same bits as one block per tile.
    for cap in (1, 2):
        capped, capped_info = run(builds, spec, a, max_blocks=cap, orders=("f", "s2"))
        np.testing.assert_array_equal(capped_info, info)
        np.testing.assert_array_equal(capped.view(_bits(capped)), out.view(_bits(out)))


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
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
    parts = [
        ("good", good, np.zeros(len(good), np.int32)),
        ("singular", singular, steps),
        ("singular", zero_col, np.array([c + 1], np.int32)),
        ("singular", zero, np.array([1], np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("perm", perms, np.zeros(len(perms), np.int32)),
    ]
    stack = np.concatenate([p[1] for p in parts])
    expected = np.concatenate([p[2] for p in parts])
    kinds = np.concatenate([[p[0]] * len(p[1]) for p in parts])
    order = rng.permutation(len(stack))  # interleave the kinds
    return stack[order], expected[order], kinds[order]


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
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
    np.testing.assert_array_equal(out[good].view(_bits(out)), alone.view(_bits(alone)))


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


@pytest.mark.parametrize("spec", RC_SPECS, ids=spec_id)
def test_rcond_variant(rc_builds, host_lib, spec):
    rng = np.random.default_rng(40 * spec.n + spec.dtype.num)
    a, expected = rcond_stack(rng, spec)
    before = a.copy()
    out, info, rc = _cuda_emu.run(spec, a, exe=rc_builds[spec])
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
    capped, capped_info, capped_rc = _cuda_emu.run(spec, a[:m], exe=rc_builds[spec], max_blocks=1, orders=("f",))
    np.testing.assert_array_equal(capped_info, info[:m])
    np.testing.assert_array_equal(capped_rc.view(_bits(capped_rc)), rc[:m].view(_bits(rc)))


def test_rcond_variants_cover_the_dispatched_instantiations():
    assert {kernels.kernel_spec(s.n, s.dtype, rcond=True) for s in SPECS
            if kernels.has_rcond_variant(s.n, s.dtype)} == set(RC_SPECS)


# --- mutation tests: the harness catches the bugs it exists for ----------------


def _spec(dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype))


MUTATIONS = [
    # (id, spec, original text, mutated text, how it is caught). Each original
    # occurs exactly once in kernels.cu. How: "asan" (AddressSanitizer stops
    # the run), "race" (the thread orders disagree), "divergent" (lanes reach
    # different collectives), "wrong" (runs, but not the host build's bits),
    # "memory" (AddressSanitizer or UndefinedBehaviorSanitizer stops a run whose
    # wrong pivot or unsynchronized read sends a store out of bounds).
    ("thread-load-index-off-by-one", _spec(np.float64, 4),
     "{ stage_in<T, NN, B>(stage, a + first * NN,", "{ stage_in<T, NN, B>(stage, a + first * NN + 1,",
     "asan"),
    ("thread-stage-slot-off-by-one", _spec(np.float32, 3),
     "return Op::load([&](int p, int q) { return slot(p * N + q); }, row, col);",
     "return Op::load([&](int p, int q) { return slot.at[(p * N + q) * (B + 1) + 1]; }, row, col);", "race"),
    ("thread-missing-syncthreads", _spec(np.float64, 3),
     "        fill(stage, t, first, count);\n        __syncthreads();\n", "        fill(stage, t, first, count);\n", "race"),
    ("thread-grid-stride-step", _spec(np.float64, 3),
     "tile < tiles; tile += gridDim.x) {", "tile < tiles; tile += gridDim.x + 1) {", "wrong"),
    ("thread-direct-load-past-the-matrix", _spec(np.float32, 2),
     "{ return a[i * NN + p * N + q]; }", "{ return a[i * NN + p * N + q + 1]; }", "asan"),
    ("thread-direct-store-past-the-matrix", _spec(np.complex64, 1),
     "{ out[i * NN + e] = v; }", "{ out[i * NN + e + 1] = v; }", "asan"),
    ("group-pivot-row-read-one-slot-off", _spec(np.float64, 16),
     "r[j - 1] = fms(r[j], l, prow[j]);", "r[j - 1] = fms(r[j], l, prow[j - 1]);", "wrong"),
    ("group-warp-reduction-min-for-max", _spec(np.float32, 17),
     "top_lo = __reduce_max_sync(", "top_lo = __reduce_min_sync(", "memory"),
    ("group-wrong-butterfly-mask", _spec(np.float32, 12),
     "R other = shfl_xor(best, off, G);", "R other = shfl_xor(best, off ^ 1, G);", "memory"),
    ("group-missing-syncwarp-before-the-permutation-is-read", _spec(np.float64, 16),
     "        __syncwarp();\n        const int col_of_mine", "        const int col_of_mine", "memory"),
    ("group-syncwarp-only-in-lanes-with-a-row", _spec(np.float64, 12),
     "        __syncwarp();  // every lane has read U", "        if (has_row) __syncwarp();  // every lane has read U",
     "divergent"),
    ("group-store-row-index-rotated", _spec(np.complex64, 9),
     "dst[i * N] = nonfinite", "dst[((i + 1) % N) * N] = nonfinite", "wrong"),
    ("group-info-index-off-by-one", _spec(np.float64, 16), "info[first + grp] =", "info[first + grp + 1] =", "asan"),
]  # fmt: skip

CAUGHT_BY = {
    "asan": lambda exc: "ERROR: AddressSanitizer" in exc.stderr,
    "race": lambda exc: exc.returncode == 4 and "differs between thread orders" in exc.stderr,
    "divergent": lambda exc: exc.returncode == 3 and "divergent warp" in exc.stderr,
    "memory": lambda exc: "ERROR: AddressSanitizer" in exc.stderr or "runtime error:" in exc.stderr,
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutated_kernel_is_caught(tmp_path, host_lib, mutation):
    name, spec, original, mutated, how = mutation
    source = (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    assert source.count(original) == 1, f"{name}: the text to mutate is no longer unique in kernels.cu"
    (tmp_path / "kernels.cu").write_text(source.replace(original, mutated))
    for header in _cuda_emu.HEADERS:
        shutil.copy(_cuda_emu.KERNEL_DIR / header, tmp_path / header)
    exe = _cuda_emu.build(spec, kernel_dir=tmp_path)
    rng = np.random.default_rng(7)
    a = random_matrices(rng, tile_count(spec), spec.n, spec.dtype)
    if how == "wrong":
        out, info = _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
        ref, ref_info = host_invert(host_lib, a)
        same = np.array_equal(info, ref_info) and np.array_equal(out.view(_bits(out)), ref.view(_bits(ref)))
        assert not same, f"{name}: the mutated kernel gave the right results"
        return
    with pytest.raises(_cuda_emu.EmulationError) as caught:
        _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
    assert CAUGHT_BY[how](caught.value), f"{name}: expected to be caught as {how}, got:\n{caught.value.stderr}"


def test_unmutated_copy_runs_clean(tmp_path, host_lib):
    # The control for the mutation tests: the same procedure on an exact copy passes.
    spec = _spec(np.float64, 12)
    shutil.copy(_cuda_emu.KERNEL_DIR / "kernels.cu", tmp_path / "kernels.cu")
    for header in _cuda_emu.HEADERS:
        shutil.copy(_cuda_emu.KERNEL_DIR / header, tmp_path / header)
    exe = _cuda_emu.build(spec, kernel_dir=tmp_path)
    a = random_matrices(np.random.default_rng(7), tile_count(spec), spec.n, spec.dtype)
    out, info = _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
    assert_same_as_host(host_lib, a, out, info)


RC_MUTATIONS = [
    # The rcond variants' own code: (id, spec, original, mutated, how caught).
    ("thread-rcond-index-off-by-one", kernels.kernel_spec(3, np.float64, rcond=True),
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] =",
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i + 1] =", "asan"),
    ("thread-rcond-norm-after-the-inverse", kernels.kernel_spec(2, np.complex64, rcond=True),
     # ||A|| taken from r after the inversion: ||X||.
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] = rcond_of(code, a_norm,",
     "invert_in_place<T, N>(r, col);\n        if constexpr (RC) rcond[i] = rcond_of(code, one_norm<T, N>(r),", "wrong"),
    ("group-rcond-a-norm-of-one-column", kernels.kernel_spec(12, np.float32, rcond=True),
     "a_norm = max_keep_nan(a_norm, shfl_xor(a_norm, off, G));", "", "wrong"),
    ("group-rcond-x-norm-from-the-wrong-lane", kernels.kernel_spec(20, np.complex128, rcond=True),
     "x_norm = max_keep_nan(x_norm, shfl_xor(x_norm, off, G));",
     "x_norm = max_keep_nan(x_norm, shfl_xor(x_sum, off ^ 1, G));", "wrong"),
]  # fmt: skip


@pytest.mark.parametrize("mutation", RC_MUTATIONS, ids=[m[0] for m in RC_MUTATIONS])
def test_mutated_rcond_is_caught(tmp_path, host_lib, mutation):
    name, spec, original, mutated, how = mutation
    source = (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    assert source.count(original) == 1, f"{name}: the text to mutate is no longer unique in kernels.cu"
    (tmp_path / "kernels.cu").write_text(source.replace(original, mutated))
    for header in _cuda_emu.HEADERS:
        shutil.copy(_cuda_emu.KERNEL_DIR / header, tmp_path / header)
    exe = _cuda_emu.build(spec, kernel_dir=tmp_path)
    rng = np.random.default_rng(9)
    a = random_matrices(rng, tile_count(spec), spec.n, spec.dtype)
    a[::3] *= np.logspace(0, -3, spec.n).astype(a.real.dtype)  # columns of unequal norm
    if how == "wrong":
        out, info, rc = _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
        with pytest.raises(AssertionError):
            assert_rcond(spec, a, out, info, rc)
        return
    with pytest.raises(_cuda_emu.EmulationError) as caught:
        _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
    assert CAUGHT_BY[how](caught.value), f"{name}: expected to be caught as {how}, got:\n{caught.value.stderr}"
