"""Bugs found while building the ecosystem adapters, pinned down."""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv


@pytest.mark.parametrize("shape", [(2, 2), (1, 2, 2), (1, 3, 3), (1, 4, 4), (1, 1, 1)])
def test_single_matrix_input_is_not_scaled_in_place(shape):
    # A batch of one reached the closed forms as a view of the caller's array
    # and was scaled by a power of two in place (and failed on read-only input).
    n = shape[-1]
    a = np.broadcast_to(np.eye(n) * 4.0, shape).copy()
    before = a.copy()
    x = gpuinv.inv(a, device="cpu")
    np.testing.assert_array_equal(a, before)
    np.testing.assert_allclose(x, np.broadcast_to(np.eye(n) / 4.0, shape))
    a.flags.writeable = False
    np.testing.assert_allclose(gpuinv.inv(a, device="cpu"), x)
