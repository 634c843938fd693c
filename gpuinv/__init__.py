"""gpuinv: invert stacks of small square matrices, on NVIDIA GPUs or the CPU.

>>> import numpy as np, gpuinv
>>> x = gpuinv.inv(np.eye(3)[None].repeat(5, axis=0))
>>> x.shape
(5, 3, 3)

Importing gpuinv imports NumPy only: CuPy is loaded when a CuPy array
arrives or a GPU is asked for.
"""

from ._api import InvRcondResult, InvResult, inv, inv_ex
from ._config import config
from ._device import CudaUnavailableError
from ._errors import INFO_NONFINITE, INFO_OK, SingularMatrixError
from ._numerics import LinAlgWarning
from ._solve import SolveRcondResult, SolveResult, solve, solve_ex

__version__ = "0.1.0"

__all__ = [
    "inv",
    "inv_ex",
    "InvResult",
    "InvRcondResult",
    "solve",
    "solve_ex",
    "SolveResult",
    "SolveRcondResult",
    "LinAlgWarning",
    "SingularMatrixError",
    "CudaUnavailableError",
    "INFO_OK",
    "INFO_NONFINITE",
    "config",
    "__version__",
]
