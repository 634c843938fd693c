"""Loading the tests' helper modules by path, in one place: the CuPy stand-in and its kin.

The tests folder has no ``__init__.py``, so ``tests/_fake_cupy.py``,
``tests/_fake_cupy_numerics.py`` and ``tests/_chunk_spy.py`` are loaded from
their files. :func:`shared` loads each once per process under a fixed name,
so that every test file sees the same instance (its state, and its classes:
the ``FakeCudaError`` one file raises is the class another file catches).
:func:`fresh` loads a new instance for a test that must not share one.

Also the one request the CUDA tests call the engines with directly
(:func:`invert`: the cheapest request, the general inverse).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _exec(name: str, file: str, register: Any = None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / file)
    module = importlib.util.module_from_spec(spec)
    if register is not None:
        register(name, module)  # before exec: dataclasses and pickling look the module up
    spec.loader.exec_module(module)
    return module


def shared(file: str, name: str | None = None) -> ModuleType:
    """``tests/<file>`` as module ``name`` (``gpuinv_tests_<stem>``), loaded once per process."""
    name = name or "gpuinv_tests" + Path(file).stem
    if name not in sys.modules:
        _exec(name, file, register=sys.modules.__setitem__)
    return sys.modules[name]


def fresh(file: str, name: str, monkeypatch: Any = None) -> ModuleType:
    """A new instance of ``tests/<file>``, registered as ``name`` for the test's
    duration (through ``monkeypatch``), or not at all without one."""
    register = None
    if monkeypatch is not None:
        def register(key: str, module: ModuleType) -> None:
            monkeypatch.setitem(sys.modules, key, module)
    return _exec(name, file, register=register)


def fake_cupy() -> ModuleType:
    """The shared CuPy stand-in (tests/_fake_cupy.py)."""
    return shared("_fake_cupy.py", "gpuinv_tests_fake_cupy")


def fake_cupy_numerics() -> ModuleType:
    """The stand-in's extension for the structure, rcond and solve routes."""
    return shared("_fake_cupy_numerics.py", "gpuinv_tests_fake_cupy_numerics")


def chunk_spy() -> ModuleType:
    """The spy on the CUDA engine's chunks (tests/_chunk_spy.py)."""
    return shared("_chunk_spy.py", "gpuinv_tests_chunk_spy")


def invert(engine: Any, op: Any, **options: Any) -> tuple[Any, Any]:
    """``(inverse, info)`` of ``op`` on ``engine`` through its seam, for the
    general inverse without rcond (``options``: the CUDA engine's ``route``)."""
    from gpuinv._request import make_request

    return engine.inverse(make_request("inverse"), op, **options)[:2]
