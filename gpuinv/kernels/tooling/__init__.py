"""Build-time tooling of the small-matrix kernels: nothing here runs when the library inverts matrices.

``python -m gpuinv.kernels`` (``gpuinv/kernels/__main__.py``, a thin entry
point) runs :func:`cli.main`:

* ``check.py``: compile every instantiation through NVRTC without a GPU and
  read ptxas's register and spill report (``--check``);
* ``sass.py``: take a kernel's machine code out of the cubin, disassemble it
  and count what one trip of its tile loop executes;
* ``model.py``: the cost model built on that count, its JSON records and
  the CI budget (``--model``, ``--json``, ``--budget``, ``--update-budget``);
* ``cli.py``: the command line.

The runtime (``gpuinv.kernels`` and the engines) never imports this package
(tests/test_import.py checks), so none of it is loaded by ``import gpuinv``
or by a kernel launch. docs/kernels.md ("Cost model") has the method.
"""
