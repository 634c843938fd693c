"""import gpuinv stays cheap: NumPy only, no GPU libraries, no device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_import_loads_no_optional_framework(compiled):
    # Without the compiled route (GPUINV_CPU_COMPILED=0, or Numba absent) a
    # small call loads none of them. With it, the inverse at n = 2..4 runs
    # the compiled kernels since issue 19 (engines/cpu_routes.py,
    # COMPILED_INV_MIN_N), so Numba (which imports SciPy itself) loads on
    # the first such call, as it did at n >= 5 before; nothing else does,
    # and n = 1 loads nothing.
    code = (
        "import sys, gpuinv, numpy as np\n"
        "gpuinv.inv(np.full((4, 1, 1), 2.0))\n"
        "early = [m for m in ('scipy', 'numba') if m in sys.modules]\n"
        "gpuinv.inv(np.eye(3)[None].repeat(4, 0))\n"
        "gpuinv.inv_ex(np.eye(2))\n"
        "frameworks = ('cupy', 'cupyx', 'torch', 'jax', 'dask')\n"
        "if gpuinv.config.cpu_compiled: bad = [m for m in frameworks if m in sys.modules] + early\n"
        "else: bad = [m for m in frameworks + ('scipy', 'numba') if m in sys.modules]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, GPUINV_CPU_COMPILED=compiled)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
        env=env,
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
