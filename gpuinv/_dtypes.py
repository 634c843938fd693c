"""The dtype rules, in one place.

=====================================  ==========================
input dtype                            computed and returned as
=====================================  ==========================
float32, float64, complex64/128        itself (native byte order)
float16                                float32
bool, signed and unsigned integers     float64
anything else                          TypeError
=====================================  ==========================

long double types are refused rather than silently rounded to float64:
neither LAPACK's batched drivers nor cuBLAS has them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SUPPORTED", "result_dtype", "real_dtype"]

#: The dtypes every engine computes in.
SUPPORTED = tuple(np.dtype(t) for t in ("float32", "float64", "complex64", "complex128"))


def result_dtype(dtype: np.dtype) -> np.dtype:
    """Return the dtype that ``inv`` computes and returns for input ``dtype``.

    Raises
    ------
    TypeError
        For object, string, datetime, structured, long double and other
        dtypes that have no inverse.
    """
    dtype = np.dtype(dtype)
    kind = dtype.kind
    if kind in "biu":
        return np.dtype(np.float64)
    if kind in "fc":
        native = dtype.newbyteorder("=")
        if native == np.float16:
            return np.dtype(np.float32)
        if native in SUPPORTED:
            return native
        raise TypeError(
            f"array type {dtype} is unsupported in gpuinv.inv: use float32, float64, "
            "complex64 or complex128 (long double types are not supported)"
        )
    what = {
        "O": "object",
        "U": "string",
        "S": "bytes",
        "M": "datetime",
        "m": "timedelta",
        "V": "structured or void",
    }.get(kind, "non-numeric")
    raise TypeError(
        f"array type {dtype} ({what}) is unsupported in gpuinv.inv: "
        "the input must hold numbers (bool, integer, float or complex)"
    )


def real_dtype(dtype: np.dtype) -> np.dtype:
    """The real counterpart of a supported dtype (complex64 -> float32)."""
    return np.dtype(dtype).type(0).real.dtype
