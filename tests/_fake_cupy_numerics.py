"""Extends tests/_fake_cupy.py with what issue 10's CUDA routes call.

Kept in its own file so that the base stand-in stays as it is: the fixture
in tests/test_cuda_numerics_fake.py installs these onto the fake modules
for the duration of a test.

* ``cupy.ascontiguousarray``, ``cupy.broadcast_to``, ``cupy.where``, ``cupy.ones``:
  NumPy's, returning "device" arrays;
* cuBLAS ``<t>getrsBatched``: solves with the LU factors and pivots that the
  fake ``getrfBatched`` left, for ``nrhs`` column-major right-hand sides;
  ``info`` is a host pointer, as in cuBLAS;
* cuSOLVER ``<t>potrfBatched`` (lower fill mode only, the one the engine
  uses): an unblocked Cholesky written here, with potrf's info codes;
* cuSOLVER ``<t>potrsBatched``: refuses ``nrhs != 1`` as cuSOLVER does.
"""

from __future__ import annotations

import numpy as np


def _ascontiguousarray(fake, a, dtype=None):
    return fake._alloc(np.ascontiguousarray(np.asarray(a), dtype=dtype))


def _broadcast_to(fake, a, shape):
    return np.broadcast_to(np.asarray(a), shape).view(fake.ndarray)


def _cholesky_lower(m: np.ndarray) -> int:
    """In place on a column-major view ``m`` (m[i, j] is row i, col j): the
    lower factor replaces the lower triangle; returns potrf's info."""
    n = m.shape[0]
    with np.errstate(all="ignore"):
        for k in range(n):
            d = (m[k, k] - np.vdot(m[k, :k], m[k, :k])).real
            if not d > 0:
                return k + 1
            m[k, k] = np.sqrt(d)
            for i in range(k + 1, n):
                m[i, k] = (m[i, k] - np.dot(m[i, :k], np.conj(m[k, :k]))) / m[k, k]
    return 0


def install(fake, monkeypatch, calls: list) -> None:
    """Add the functions above to the installed fake (``fake`` is the module)."""
    import sys

    cublas = sys.modules["cupy.cuda.cublas"]
    cusolver = sys.modules["cupy.cuda.cusolver"]
    monkeypatch.setattr(fake, "ascontiguousarray",
                        lambda a, dtype=None: _ascontiguousarray(fake, a, dtype), raising=False)
    monkeypatch.setattr(fake, "ones", lambda shape, dtype=np.float64: fake._alloc(
        np.ones(shape, dtype=dtype)), raising=False)
    # NumPy's where drops the subclass; CuPy's returns a device array.
    monkeypatch.setattr(fake, "where",
                        lambda c, x, y: np.asarray(np.where(c, x, y)).view(fake.ndarray))
    monkeypatch.setattr(fake, "broadcast_to", lambda a, shape: _broadcast_to(fake, a, shape),
                        raising=False)
    for letter, dtype in zip("sdcz", (np.float32, np.float64, np.complex64, np.complex128)):

        def getrs_batched(handle, trans, n, nrhs, a_array, lda, piv_ptr, b_array, ldb, info,
                          batch, dtype=dtype):
            assert trans == 0 and lda == n and ldb == n and 0 < batch <= 65535
            aps = fake._mem(a_array, 8 * batch, np.uint64)
            bps = fake._mem(b_array, 8 * batch, np.uint64)
            pivs = fake._mem(piv_ptr, 4 * n * batch, np.int32).reshape(batch, n)
            for i in range(batch):
                lu = fake._colmajor(int(aps[i]), n, dtype)
                size = n * nrhs * np.dtype(dtype).itemsize
                rhs = fake._mem(int(bps[i]), size, dtype).reshape(nrhs, n).T
                with np.errstate(all="ignore"):
                    rhs[...] = fake._lu_inverse(lu, pivs[i]) @ rhs
            fake._mem(info, 4, np.int32)[0] = 0  # a host address
            calls.append(("getrsBatched", batch, nrhs))

        def potrf_batched(handle, uplo, n, a_array, lda, info_ptr, batch, dtype=dtype):
            assert uplo == 0 and lda == n and 0 < batch
            aps = fake._mem(a_array, 8 * batch, np.uint64)
            infos = fake._mem(info_ptr, 4 * batch, np.int32)
            for i in range(batch):
                infos[i] = _cholesky_lower(fake._colmajor(int(aps[i]), n, dtype))
            calls.append(("potrfBatched", batch))

        def potrs_batched(handle, uplo, n, nrhs, a_array, lda, b_array, ldb, dev_info, batch,
                          dtype=dtype):
            assert uplo == 0 and lda == n and ldb == n and 0 < batch
            if nrhs != 1:  # cuSOLVER: "nrhs must be 1" for the batched potrs
                fake._mem(dev_info, 4, np.int32)[0] = -4
                raise AssertionError("potrsBatched supports nrhs = 1 only")
            aps = fake._mem(a_array, 8 * batch, np.uint64)
            bps = fake._mem(b_array, 8 * batch, np.uint64)
            for i in range(batch):
                low = np.tril(fake._colmajor(int(aps[i]), n, dtype))
                b = fake._mem(int(bps[i]), n * np.dtype(dtype).itemsize, dtype)
                with np.errstate(all="ignore"):
                    z = np.linalg.solve(low, b) if np.all(np.diag(low) != 0) else b * np.nan
                    b[...] = np.linalg.solve(low.conj().T, z) if np.isfinite(z).all() else np.nan
            fake._mem(dev_info, 4, np.int32)[0] = 0
            calls.append(("potrsBatched", batch))

        monkeypatch.setattr(cublas, letter + "getrsBatched", getrs_batched, raising=False)
        monkeypatch.setattr(cusolver, letter + "potrfBatched", potrf_batched, raising=False)
        monkeypatch.setattr(cusolver, letter + "potrsBatched", potrs_batched, raising=False)
