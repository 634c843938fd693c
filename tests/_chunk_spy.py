"""A spy on the chunks of the CUDA numerics routes, shared by the fake-CuPy and the GPU tests."""

from __future__ import annotations


def spy_chunks(monkeypatch, numerics, fail_first=None) -> list[int]:
    """Record the matrices of every chunk that ``numerics`` (the module
    gpuinv.engines.cuda.engine) computes; with ``fail_first`` (CuPy's
    OutOfMemoryError class), the first chunk raises it instead, as an
    allocation at the start of a chunk would."""
    sizes: list[int] = []
    for name in ("_inverse_compute", "_solve_compute"):
        real = getattr(numerics, name)

        def factory(*args, real=real, **kw):
            compute = real(*args, **kw)

            def spy(ins, outs, owned):
                sizes.append(outs[0].shape[0])
                if fail_first is not None and len(sizes) == 1:
                    raise fail_first(1 << 40, 0)
                compute(ins, outs, owned)

            return spy

        monkeypatch.setattr(numerics, name, factory)
    return sizes
