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


def test_the_runtime_never_imports_the_kernel_tooling():
    # gpuinv/kernels/tooling (NVRTC checks, SASS parsing, the cost model) is
    # build-time only: importing every other module of the package, the
    # launcher gpuinv.kernels included, must not load it.
    code = (
        "import importlib, pkgutil, sys, gpuinv\n"
        "skip = ('gpuinv.kernels.tooling', 'gpuinv.kernels.__main__', 'gpuinv.__main__')\n"
        "def walk(path, prefix):\n"  # pkgutil.walk_packages would import the skipped package
        "    for info in pkgutil.iter_modules(path, prefix):\n"
        "        if info.name.startswith(skip):\n"
        "            continue\n"
        "        try:\n"
        "            module = importlib.import_module(info.name)\n"
        "        except ImportError as exc:  # an optional framework (cupy, torch, jax, dask) is missing\n"
        "            if (exc.name or '').split('.')[0] not in ('cupy', 'cupyx', 'torch', 'jax', 'dask', 'distributed'):\n"
        "                raise\n"
        "            continue\n"
        "        if info.ispkg:\n"
        "            walk(module.__path__, info.name + '.')\n"
        "walk(gpuinv.__path__, 'gpuinv.')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('gpuinv.kernels.tooling'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (ROOT / "gpuinv" / "kernels" / "tooling" / "__init__.py").exists()
