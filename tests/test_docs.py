"""The examples in docstrings and examples/ run and say what they claim."""

import doctest
import subprocess
import sys
from pathlib import Path

import pytest

import gpuinv
import gpuinv._api
import gpuinv._chunks

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", [gpuinv, gpuinv._api, gpuinv._chunks])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_singular_example_runs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "singular.py")],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert "1 singular at batch indices [2]" in out.stdout
    assert "matrix 4: NaN or Inf in the input" in out.stdout
