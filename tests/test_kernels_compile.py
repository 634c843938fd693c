"""The kernels compile through NVRTC for sm_80 and sm_90 without spills; no GPU needed.

The ptxas-report parser and the check's exit status are tested on sample
text everywhere; the real compilation needs CuPy and libnvrtc
(``pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12``) and is skipped
without them.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv.kernels as kernels
from gpuinv.kernels import _check
from gpuinv.kernels._check import KernelReport, NvrtcCompileError, parse_ptxas_report

SAMPLE_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6gpuinv10inv_threadIdLi4ELi128EEEvPKT_PS1_Pix' for 'sm_90'
ptxas info    : Function properties for _ZN6gpuinv10inv_threadIdLi4ELi128EEEvPKT_PS1_Pix
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 16512 bytes smem, 384 bytes cmem[0]
ptxas info    : Compile time = 12.5 ms
ptxas info    : Function properties for _Z6helperv
ptxas         .     8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN6gpuinv9inv_groupIdLi10ELi16ELi4EEEvPKT_PS1_Pix' for 'sm_90'
ptxas info    : Function properties for _ZN6gpuinv9inv_groupIdLi10ELi16ELi4EEEvPKT_PS1_Pix
ptxas         .     32 bytes stack frame, 28 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 32 bytes cumulative stack size, 7040 bytes smem, 384 bytes cmem[0]
ptxas info    : Compile time = 80.1 ms
"""


def test_parser_reads_registers_spills_and_shared_memory():
    parsed = parse_ptxas_report(SAMPLE_LOG)
    assert parsed == {
        "_ZN6gpuinv10inv_threadIdLi4ELi128EEEvPKT_PS1_Pix": {
            "registers": 64,
            "spill_stores": 0,
            "spill_loads": 0,
            "stack_bytes": 0,
            "shared_bytes": 16512,
        },
        "_ZN6gpuinv9inv_groupIdLi10ELi16ELi4EEEvPKT_PS1_Pix": {
            "registers": 64,
            "spill_stores": 28,
            "spill_loads": 36,
            "stack_bytes": 32,
            "shared_bytes": 7040,
        },
    }


def test_parser_ignores_device_function_properties_and_empty_logs():
    # The helper's 8-byte stack frame must not be charged to any kernel.
    parsed = parse_ptxas_report(SAMPLE_LOG)
    assert "_Z6helperv" not in parsed
    assert parsed["_ZN6gpuinv10inv_threadIdLi4ELi128EEEvPKT_PS1_Pix"]["stack_bytes"] == 0
    assert parse_ptxas_report("") == {}


def fake_report(spec, *, spill: int, default: bool = True) -> KernelReport:
    return KernelReport(
        spec=spec, arch="sm_90", default=default, registers=40,
        spill_stores=spill, spill_loads=spill, stack_bytes=spill, shared_bytes=0,
    )  # fmt: skip


def test_check_fails_on_a_spill_in_a_dispatched_kernel_only(monkeypatch):
    spec = kernels.kernel_spec(4, np.float64)
    extra = kernels.KernelSpec(np.dtype(np.complex128), 8, "thread", 32, 32, 1)

    def reports(spill_default: int, spill_extra: int):
        return lambda *args, **kwargs: [
            fake_report(spec, spill=spill_default),
            fake_report(extra, spill=spill_extra, default=False),
        ]

    lines: list[str] = []
    monkeypatch.setattr(_check, "collect_reports", reports(0, 64))
    assert _check.run_check(out=lines.append) == 0
    assert any("(not dispatched) spill" in line for line in lines)
    monkeypatch.setattr(_check, "collect_reports", reports(8, 0))
    lines.clear()
    assert _check.run_check(out=lines.append) == 1
    assert any("SPILL" in line for line in lines)
    assert lines[-1].startswith("FAILED")


def test_instantiations_cover_every_dispatched_case():
    specs = kernels.instantiations()
    for dt, max_n in kernels.KERNEL_MAX_N.items():
        ns = sorted(s.n for s in specs if s.dtype == dt)
        assert ns == list(range(1, max_n + 1))
    for s in specs:
        assert s.shared_bytes <= 48 * 1024
        assert (s.shape == "thread") == (s.n <= kernels.THREAD_MAX_N[s.dtype])
        if s.shape == "group":
            assert s.n <= s.group <= 32 and s.group & (s.group - 1) == 0
    assert len({s.name_expression for s in specs}) == len(specs)


def nvrtc_or_skip():
    pytest.importorskip("cupy")
    try:
        return _check._load_nvrtc()
    except ImportError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")


def test_compile_error_is_reported_with_the_log(monkeypatch):
    nvrtc_or_skip()
    monkeypatch.setattr(_check, "kernel_source", lambda: "this is not CUDA;")
    with pytest.raises(NvrtcCompileError, match="NVRTC failed for sm_90"):
        _check.compile_report([kernels.kernel_spec(2, np.float32)], "sm_90", set())


@pytest.fixture(scope="module")
def reports():
    nvrtc_or_skip()
    return _check.collect_reports(_check.ARCHS)


@pytest.mark.parametrize("arch", _check.ARCHS)
def test_every_dispatched_kernel_compiles_without_spills(reports, arch):
    mine = {r.spec: r for r in reports if r.arch == arch}
    assert set(mine) == set(kernels.instantiations())
    spilling = [f"{r.spec.label()} ({r.spill_stores} B stored)" for r in mine.values() if r.spills]
    assert not spilling, f"register spills on {arch}: {spilling}"
    for r in mine.values():
        assert 0 < r.registers <= 255


def test_cuda_route_sends_small_n_to_the_kernels():
    from gpuinv._dispatch import cuda_route

    for dt, max_n in kernels.KERNEL_MAX_N.items():
        assert cuda_route(1, dt) == "kernel"
        assert cuda_route(max_n, dt) == "kernel"
        assert cuda_route(max_n + 1, dt) == "cublas"
        assert cuda_route(max_n, dt.str) == "kernel"  # any dtype-like
    assert cuda_route(0, np.float64) == "cublas"


def test_importing_the_kernels_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, gpuinv, gpuinv.kernels, gpuinv._dispatch; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_kernel_source_inlines_the_header():
    source = kernels.kernel_source()
    assert '#include "inverse.cuh"' not in source
    assert "lu_row_step" in source and "inv_group" in source
