"""What the LU inverse's two shapes write, compared where n lets both run.

Where n lets both the one-thread kernel (inv_thread) and the lane-group
kernel (inv_group) run, the emulation (tests/_cuda_emu.py) runs both on one
stack: good matrices, exactly singular ones (info > 0 at every step, the
zero matrix among them) and non-finite ones (info -1). info agrees
everywhere, and the output bit for bit wherever info <= 0. At info > 0 the
output differs, by design (kernels.cu, inv_group's comment; docs/kernels.md,
"The two shapes at info > 0"): at a zero pivot inv_group takes 1 as its
reciprocal and updates the rows below, inv_thread keeps the zero and leaves
them, so the zero matrix gives X = I from one and X = 0 from the other.
Agreement there costs the one-thread kernel registers past the CI budget;
this test pins the difference so that a change to either shows.
"""

from __future__ import annotations

import _cuda_emu
import numpy as np
import pytest
from _kernel_cases import exact_singular, random_matrices

import gpuinv.kernels as kernels

pytestmark = pytest.mark.skipif(_cuda_emu.available() is not None, reason=str(_cuda_emu.available()))


def group_spec(n: int, dt: np.dtype) -> kernels.KernelSpec:
    """inv_group at n: G lanes a matrix, four warps (kernel_spec's choice above THREAD_MAX_N)."""
    group = 1 << (n - 1).bit_length()
    return kernels.KernelSpec(dt, n, "group", 128, 4 * (32 // group), group)


def thread_spec(n: int, dt: np.dtype) -> kernels.KernelSpec:
    """inv_thread at n, staged or stage-less as kernel_spec builds it (its bound aside)."""
    return kernels._thread_spec(dt, n, "inv")


# Both shapes at the n where dispatch switches (THREAD_MAX_N and the n above
# it), and the stage-less one-thread kernel (n = 2 float32, 1 complex128).
CASES = [(np.dtype(dt), n) for dt, n in (
    (np.float32, 2), (np.float32, 8), (np.float64, 7), (np.float64, 8),
    (np.complex64, 6), (np.complex64, 7), (np.complex128, 1), (np.complex128, 5),
)]  # fmt: skip


def case_id(case) -> str:
    return f"{case[0].name}-n{case[1]}"


def mixed_stack(rng, n: int, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Good, exactly singular (every step), zero and non-finite matrices, interleaved; and the expected info."""
    good = random_matrices(rng, 12, n, dt)
    singular, steps = exact_singular(rng, 4 * n, n, dt)
    zero = np.zeros((2, n, n), dt)
    column = random_matrices(rng, n, n, dt)
    for c in range(n):
        column[c, :, c] = 0  # a zero column c: the first zero pivot at step c + 1
    bad = random_matrices(rng, 2, n, dt)
    bad[0, -1, 0] = np.nan
    bad[1, 0, -1] = np.inf
    stack = np.concatenate([good, singular, zero, column, bad])
    expected = np.concatenate([np.zeros(12, np.int32), steps, [1, 1], np.arange(1, n + 1, dtype=np.int32),
                               [-1, -1]]).astype(np.int32)
    order = rng.permutation(len(stack))
    return stack[order], expected[order]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_thread_and_group_agree_except_at_info_above_zero(case):
    dt, n = case
    rng = np.random.default_rng(50 * n + dt.num)
    a, expected = mixed_stack(rng, n, dt)
    thread, group = thread_spec(n, dt), group_spec(n, dt)
    out_t, info_t = _cuda_emu.run(thread, a, exe=_cuda_emu.build(thread), max_blocks=2)
    out_g, info_g = _cuda_emu.run(group, a, exe=_cuda_emu.build(group), max_blocks=2)
    np.testing.assert_array_equal(info_t, expected)
    np.testing.assert_array_equal(info_g, expected)
    bits = np.dtype(f"u{dt.itemsize // (2 if dt.kind == 'c' else 1)}")
    same = expected <= 0
    np.testing.assert_array_equal(out_t[same].view(bits), out_g[same].view(bits))
    assert np.all(np.isnan(out_t[expected == -1]))
    # The zero matrix: every pivot is zero. inv_group takes 1 / pivot = 1
    # (X = I, zeros of either sign), inv_thread keeps the zero pivot (X = 0).
    zero = np.flatnonzero(np.all(a == 0, axis=(1, 2)))
    assert len(zero) >= 2  # at n = 1 the singular ones are zero matrices too
    np.testing.assert_array_equal(out_g[zero], np.broadcast_to(np.eye(n, dtype=dt), (len(zero), n, n)))
    np.testing.assert_array_equal(out_t[zero], 0)
