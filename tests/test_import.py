"""import gpuinv stays cheap: NumPy only, no GPU libraries, no device."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_loads_no_optional_framework():
    code = (
        "import sys, gpuinv, numpy as np\n"
        "gpuinv.inv(np.eye(3)[None].repeat(4, 0))\n"
        "gpuinv.inv_ex(np.eye(2))\n"
        "bad = [m for m in ('cupy', 'cupyx', 'torch', 'jax', 'dask', 'scipy', 'numba') if m in sys.modules]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names():
    import gpuinv

    assert set(gpuinv.__all__) >= {"inv", "inv_ex", "InvResult", "SingularMatrixError"}
    for name in gpuinv.__all__:
        assert hasattr(gpuinv, name)
    assert (ROOT / "gpuinv" / "py.typed").exists()
