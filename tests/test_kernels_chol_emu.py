"""Every dispatched Cholesky kernel instantiation (``inv_chol_thread``), executed on the CPU.

The same harness as tests/test_kernels_emu.py (kernels.cu compiled unchanged
against the CUDA emulation header, under AddressSanitizer and UBSan, the
real launcher's grid and block, three thread orders that must agree bit for
bit, exact-size buffers, the input checked unwritten). Results are compared
bit for bit with the host build of cholesky.cuh (tests/_kernel_cases.py),
which tests/test_kernels_chol_host.py holds to LAPACK's accuracy, so any
difference here is the kernel's staging, tiling or indexing.
"""

from __future__ import annotations

import shutil

import _cuda_emu
import numpy as np
import pytest
from _kernel_cases import (
    backward_error,
    build_chol_host_lib,
    eps,
    host_chol_invert,
    indefinite_at,
    spd_matrices,
)

import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(_cuda_emu.available() is not None, reason=str(_cuda_emu.available()))

CHOL_SPECS = [s for s in kernels.instantiations() if s.op == "chol" and not s.rcond]
RC_CHOL_SPECS = [s for s in kernels.instantiations() if s.op == "chol" and s.rcond]


def spec_id(spec: kernels.KernelSpec) -> str:
    return f"{spec.dtype.name}-n{spec.n}-{spec.kind}"


@pytest.fixture(scope="module")
def builds():
    return _cuda_emu.build_all(CHOL_SPECS)


@pytest.fixture(scope="module")
def rc_builds():
    return _cuda_emu.build_all(RC_CHOL_SPECS)


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    return build_chol_host_lib(tmp_path_factory.mktemp("emu_chol_host"))


def run(builds, spec, a, **kwargs):
    return _cuda_emu.run(spec, a, exe=builds[spec], **kwargs)


def _bits(x: np.ndarray) -> np.dtype:
    return np.dtype(f"u{x.dtype.itemsize // (2 if x.dtype.kind == 'c' else 1)}")


def assert_same_bits(x, y):
    np.testing.assert_array_equal(x.view(_bits(x)), y.view(_bits(y)))


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


@pytest.mark.parametrize("spec", CHOL_SPECS, ids=spec_id)
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
    for cap in (1, 2):
        capped, capped_info = run(builds, spec, a, max_blocks=cap, orders=("f", "s2"))
        np.testing.assert_array_equal(capped_info, info)
        assert_same_bits(capped, out)
    # Only the lower triangle is read: garbage above it changes no bit.
    junk, junk_info = run(builds, spec, with_garbage_upper(rng, a), max_blocks=2, orders=("f",))
    np.testing.assert_array_equal(junk_info, 0)
    assert_same_bits(junk, out)


@pytest.mark.parametrize("spec", CHOL_SPECS, ids=spec_id)
def test_one_matrix_and_one_past_a_full_tile(builds, host_lib, spec):
    rng = np.random.default_rng(50 * spec.n + spec.dtype.num)
    for m in (1, spec.per_block + 1):
        a = spd_matrices(rng, m, spec.n, spec.dtype, cond=1e3 if spec.n > 1 else None)
        out, info = run(builds, spec, a)
        np.testing.assert_array_equal(info, 0)
        assert_same_as_host(host_lib, a, out, info)


@pytest.mark.parametrize("spec", CHOL_SPECS, ids=spec_id)
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
    parts = [
        ("good", good, np.zeros(len(good), np.int32)),
        ("indefinite", bad, steps),
        ("indefinite", zero, np.array([1], np.int32)),
        ("nonfinite", nonfinite, np.full(len(nonfinite), -1, np.int32)),
        ("eye", eye, np.zeros(2, np.int32)),
    ]
    stack = np.concatenate([p[1] for p in parts])
    expected = np.concatenate([p[2] for p in parts])
    kinds = np.concatenate([[p[0]] * len(p[1]) for p in parts])
    order = rng.permutation(len(stack))
    a, expected, kinds = stack[order], expected[order], kinds[order]
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


@pytest.mark.parametrize("spec", RC_CHOL_SPECS, ids=spec_id)
def test_rcond_variant(rc_builds, host_lib, spec):
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
    out, info, rc = _cuda_emu.run(spec, a, exe=rc_builds[spec])
    np.testing.assert_array_equal(a, before)
    assert_same_as_host(host_lib, a, out, info)  # out and info: the plain kernel's math, bit for bit
    real = np.finfo(dt).dtype
    assert rc.dtype == real
    want = rcond_from_inverse(hermitian_as_read(a), out, info)
    np.testing.assert_array_equal(np.isnan(rc), info == -1)
    np.testing.assert_array_equal(rc[info > 0], 0)
    ok = info == 0
    np.testing.assert_allclose(rc[ok], want[ok], rtol=8 * (n + 2) * eps(real), atol=0)
    capped, capped_info, capped_rc = _cuda_emu.run(spec, a, exe=rc_builds[spec], max_blocks=1, orders=("f",))
    np.testing.assert_array_equal(capped_info, info)
    assert_same_bits(capped_rc, rc)


def test_rcond_variants_cover_the_dispatched_cholesky_instantiations():
    assert {kernels.kernel_spec(s.n, s.dtype, "chol", rcond=True) for s in CHOL_SPECS
            if kernels.has_rcond_variant(s.n, s.dtype, "chol")} == set(RC_CHOL_SPECS)


# --- mutation tests: the harness catches the Cholesky kernel's staging bugs ------------


def _spec(dtype, n):
    return kernels.kernel_spec(n, np.dtype(dtype), "chol")


MUTATIONS = [
    # (id, spec, original, mutated, how caught); each original occurs once in kernels.cu.
    ("chol-load-index-off-by-one", _spec(np.float64, 4),
     "{ stage_in<T, NN, B>(stage, a + first * NN,", "{ stage_in<T, NN, B>(stage, a + first * NN + 1,",
     "asan"),
    ("chol-missing-syncthreads", _spec(np.float32, 3),
     "        fill(stage, t, first, count);\n        __syncthreads();\n", "        fill(stage, t, first, count);\n",
     "race"),
    ("chol-reads-the-upper-triangle", _spec(np.complex64, 3),
     "return col <= row ? at(row, col) : make_zero<T>();", "return col <= row ? at(col, row) : make_zero<T>();", "wrong"),
    ("chol-grid-stride-step", _spec(np.float64, 3), "tile < tiles; tile += gridDim.x)", "tile < tiles; tile += gridDim.x + 1)", "wrong"),
    ("chol-store-index-off-by-one", _spec(np.complex128, 2),
     "dst[g] = stage[(g - mat * NN) * (B + 1) + mat];", "dst[g] = stage[(g - mat * NN) * (B + 1) + mat + 1];",
     "wrong"),
]  # fmt: skip

CAUGHT_BY = {
    "asan": lambda exc: "ERROR: AddressSanitizer" in exc.stderr,
    "race": lambda exc: exc.returncode == 4 and "differs between thread orders" in exc.stderr,
}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutated_cholesky_kernel_is_caught(tmp_path, host_lib, mutation):
    name, spec, original, mutated, how = mutation
    source = (_cuda_emu.KERNEL_DIR / "kernels.cu").read_text()
    assert source.count(original) == 1, f"{name}: the text to mutate is no longer unique in kernels.cu"
    (tmp_path / "kernels.cu").write_text(source.replace(original, mutated))
    for header in _cuda_emu.HEADERS:
        shutil.copy(_cuda_emu.KERNEL_DIR / header, tmp_path / header)
    exe = _cuda_emu.build(spec, kernel_dir=tmp_path)
    rng = np.random.default_rng(8)
    # Garbage above the diagonal, so that reading it shows.
    a = with_garbage_upper(rng, spd_matrices(rng, 2 * spec.per_block + 3, spec.n, spec.dtype))
    if how == "wrong":
        out, info = _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
        ref, ref_info = host_chol_invert(host_lib, a)
        same = np.array_equal(info, ref_info) and np.array_equal(out.view(_bits(out)), ref.view(_bits(ref)))
        assert not same, f"{name}: the mutated kernel gave the right results"
        return
    with pytest.raises(_cuda_emu.EmulationError) as caught:
        _cuda_emu.run(spec, a, exe=exe, max_blocks=2)
    assert CAUGHT_BY[how](caught.value), f"{name}: expected to be caught as {how}, got:\n{caught.value.stderr}"
