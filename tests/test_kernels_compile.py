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
from gpuinv.kernels.tooling import check as _check
from gpuinv.kernels.tooling.check import KernelReport, NvrtcCompileError, parse_ptxas_report

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
    solve = [s for s in specs if s.op == "solve"]
    specs = [s for s in specs if s.op != "solve"]
    plain = [s for s in specs if not s.rcond]
    for dt, max_n in kernels.KERNEL_MAX_N.items():
        ns = sorted(s.n for s in plain if s.dtype == dt and s.op == "inv")
        assert ns == list(range(1, max_n + 1))
    for dt, max_n in kernels.CHOL_MAX_N.items():
        ns = sorted(s.n for s in plain if s.dtype == dt and s.op == "chol")
        assert ns == list(range(1, max_n + 1))
        assert max_n <= 8
    for op, bounds in (("tril", kernels.TRI_MAX_N), ("triu", kernels.TRI_MAX_N), ("diag", kernels.DIAG_MAX_N)):
        for dt, max_n in bounds.items():
            ns = sorted(s.n for s in plain if s.dtype == dt and s.op == op)
            assert ns == list(range(1, max_n + 1))
            assert max_n <= 8
    # Every kernel has its rcond variant: the same shape and launch, RC = true.
    from dataclasses import replace

    with_rc = [replace(s, rcond=True) for s in plain if kernels.has_rcond_variant(s.n, s.dtype, s.op)]
    assert sorted((s for s in specs if s.rcond), key=str) == sorted(with_rc, key=str)
    # The few without one are the register-bound one-thread kernels, listed with their numbers.
    assert len(plain) - len(with_rc) == len(kernels._NO_RCOND_VARIANT)
    for op, dt, n in kernels._NO_RCOND_VARIANT:
        assert kernels.kernel_spec(n, dt, op).shape == "thread"
        with pytest.raises(ValueError, match="no rcond variant"):
            kernels.kernel_spec(n, dt, op, rcond=True)
    for s in plain:  # the RC template argument comes last
        assert replace(s, rcond=True).name_expression == s.name_expression[:-1] + ", true>"
    for s in specs:
        assert s.params == ("a", "out", "info", "rcond", "m")
    assert {s.op for s in specs} == {"inv", "chol", "tril", "triu", "diag"}
    names = {"chol": "inv_chol_thread<", "tril": "inv_tri_thread<", "triu": "inv_tri_thread<",
             "diag": "inv_diag_thread<"}
    for s in specs:
        assert s.shared_bytes <= 48 * 1024
        if s.op != "inv":
            assert s.shape == "thread" and s.name_expression.startswith(f"gpuinv::{names[s.op]}")
            continue
        assert (s.shape == "thread") == (s.n <= kernels.THREAD_MAX_N[s.dtype])
        if s.shape == "group":
            assert s.n <= s.group <= 32 and s.group & (s.group - 1) == 0
    assert len({s.name_expression for s in specs}) == len(specs)
    # The LU solve kernel: no rcond variant, a b input and a run-time k.
    for dt, max_n in kernels.SOLVE_MAX_N.items():
        assert sorted(s.n for s in solve if s.dtype == dt) == list(range(1, max_n + 1))
        assert max_n <= 8
    for s in solve:
        assert s.shape == "thread" and not s.rcond and s.kind == "solve-thread"
        assert s.name_expression.startswith("gpuinv::solve_thread<")
        assert s.params == ("a", "b", "out", "info", "m", "k")
        # A and one right-hand side column per system in the stage.
        assert s.shared_bytes == (0 if s.direct else (s.n * s.n + s.n) * (s.block + 1) * s.dtype.itemsize)
        assert s.shared_bytes <= 48 * 1024
    assert len({s.name_expression for s in solve}) == len(solve)
    with pytest.raises(ValueError, match="no rcond variant"):
        kernels.kernel_spec(2, np.float64, "solve", rcond=True)


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
    from gpuinv.engines.cuda.routes import cuda_route

    for dt, max_n in kernels.KERNEL_MAX_N.items():
        assert cuda_route(1, dt) == "kernel"
        assert cuda_route(max_n, dt) == "kernel"
        assert cuda_route(max_n + 1, dt) == "cublas"
        assert cuda_route(max_n, dt.str) == "kernel"  # any dtype-like
    assert cuda_route(0, np.float64) == "cublas"


def test_importing_the_kernels_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, gpuinv, gpuinv.kernels, gpuinv._dispatch, gpuinv.engines.cuda; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_kernel_source_inlines_the_header():
    source = kernels.kernel_source()
    assert '#include "inverse.cuh"' not in source
    assert "lu_row_step" in source and "inv_group" in source


# --- our own NVRTC path: the options actually used, the caches, warm_up ----------------

from gpuinv.kernels import _nvrtc  # noqa: E402


def test_nvrtc_options_keep_subnormals_and_ieee_division():
    opts = kernels.NVRTC_OPTIONS
    for flag in ("-ftz=false", "-prec-div=true", "-prec-sqrt=true", "-fmad=true"):
        assert flag in opts
    assert "-ftz=true" not in opts and "--use_fast_math" not in opts and "-use_fast_math" not in opts
    assert _nvrtc.compile_options("-arch=sm_90") == (*opts, "-arch=sm_90")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty disk cache folder and an empty in-process cache."""
    folder = tmp_path / "kernel-cache"
    monkeypatch.setenv("GPUINV_KERNEL_CACHE_DIR", str(folder))
    monkeypatch.setattr(_nvrtc, "_memory", {})
    kernels._kernel.cache_clear()
    yield folder
    kernels._kernel.cache_clear()


def recording_compiles(monkeypatch, nvrtc):
    seen: list[list[str]] = []
    real = nvrtc.compileProgram

    def compile_program(prog, options):
        seen.append(list(options))
        return real(prog, options)

    monkeypatch.setattr(nvrtc, "compileProgram", compile_program)
    return seen


def test_the_options_passed_to_nvrtc_have_flush_to_zero_off(fresh_cache, monkeypatch):
    nvrtc = nvrtc_or_skip()
    seen = recording_compiles(monkeypatch, nvrtc)
    spec = kernels.kernel_spec(2, np.float32)
    binary, origin = _nvrtc.compiled(kernels.kernel_source(), spec.name_expression, "90")
    assert origin == "compiled" and binary.kind == "cubin" and binary.data.startswith(b"\x7fELF")
    assert seen == [[*kernels.NVRTC_OPTIONS, "-arch=sm_90"]]
    assert "-ftz=false" in seen[0] and "-ftz=true" not in seen[0]
    assert binary.names[spec.name_expression].startswith("_ZN6gpuinv10inv_threadIfLi2E")


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_float32_code_does_not_flush_subnormals(dtype):
    # PTX marks flush-to-zero per instruction (div.rn.ftz.f32, fma.rn.ftz.f32):
    # with our options no instruction carries it; with -ftz=true (what CuPy's
    # RawModule appends) they do, so this check would see the regression.
    nvrtc_or_skip()
    spec = kernels.kernel_spec(2, dtype)
    ours = _nvrtc.nvrtc_compile(kernels.kernel_source(), [spec.name_expression],
                                _nvrtc.compile_options("-arch=compute_90"), "ptx")
    assert b".f32" in ours.data and b".ftz" not in ours.data
    cupys = _nvrtc.nvrtc_compile(kernels.kernel_source(), [spec.name_expression],
                                 (*_nvrtc.compile_options("-arch=compute_90"), "-ftz=true"), "ptx")
    assert b".ftz" in cupys.data


def test_disk_cache_is_reused_checked_and_keyed_by_options(fresh_cache, monkeypatch):
    nvrtc = nvrtc_or_skip()
    spec = kernels.kernel_spec(1, np.float64)
    source = kernels.kernel_source()
    first, origin = _nvrtc.compiled(source, spec.name_expression, "sm_90")
    assert origin == "compiled"
    # (not the writer's temporary files, which another test's compile may be holding)
    files = [f for f in fresh_cache.glob("*.bin") if not f.name.startswith(".tmp-")]
    assert len(files) == 1, files
    assert _nvrtc.compiled(source, spec.name_expression, "90")[1] == "memory"
    monkeypatch.setattr(_nvrtc, "_memory", {})
    again, origin = _nvrtc.compiled(source, spec.name_expression, "90")
    assert origin == "disk" and again.data == first.data and again.names == first.names
    # A truncated file is not trusted: it is compiled again and rewritten.
    files[0].write_bytes(files[0].read_bytes()[:-100])
    monkeypatch.setattr(_nvrtc, "_memory", {})
    seen = recording_compiles(monkeypatch, nvrtc)
    repaired, origin = _nvrtc.compiled(source, spec.name_expression, "90")
    # Not compared with `first` byte for byte: NVRTC 12.9 was seen, rarely, to
    # give cubins of the same source that differ in one byte.
    assert origin == "compiled" and repaired.names == first.names and len(seen) == 1
    reread = _nvrtc._read(files[0], repaired.options)
    assert reread is not None and reread.data == repaired.data  # the file was rewritten whole
    # Another architecture, option set, source or NVRTC version is another key.
    key = _nvrtc.cache_key(source, spec.name_expression, first.options, (12, 9), "cubin")
    assert key != _nvrtc.cache_key(source, spec.name_expression, first.options, (12, 8), "cubin")
    assert key != _nvrtc.cache_key(source + " ", spec.name_expression, first.options, (12, 9), "cubin")
    other = (*first.options[:-1], "-arch=sm_80")
    assert key != _nvrtc.cache_key(source, spec.name_expression, other, (12, 9), "cubin")
    assert key != _nvrtc.cache_key(source, spec.name_expression, (*first.options, "-ftz=true"), (12, 9),
                                   "cubin")


def test_disk_cache_can_be_disabled(tmp_path, monkeypatch):
    nvrtc_or_skip()
    monkeypatch.setenv("GPUINV_KERNEL_CACHE_DIR", "")
    monkeypatch.setattr(_nvrtc, "_memory", {})
    assert _nvrtc.cache_dir() is None
    spec = kernels.kernel_spec(1, np.float32)
    assert _nvrtc.compiled(kernels.kernel_source(), spec.name_expression, "80")[1] == "compiled"
    monkeypatch.delenv("GPUINV_KERNEL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _nvrtc.cache_dir() == tmp_path / "gpuinv" / "kernels"


def test_arch_option_takes_cubins_where_nvrtc_knows_the_device():
    supported = (75, 80, 86, 89, 90)
    assert _nvrtc.arch_option("90", supported) == ("-arch=sm_90", "cubin")
    assert _nvrtc.arch_option("sm_80", supported) == ("-arch=sm_80", "cubin")
    # A device newer than this NVRTC: PTX for the newest it knows, JIT-compiled on load.
    assert _nvrtc.arch_option(120, supported) == ("-arch=compute_90", "ptx")
    with pytest.raises(ValueError, match="cannot compile for compute capability 70"):
        _nvrtc.arch_option("70", supported)


def test_the_kernel_is_loaded_from_our_cubin_not_through_rawmodule(fresh_cache, monkeypatch):
    # The engine's load path on the CuPy stand-in: the binary handed to
    # Module.load is an ELF cubin holding the mangled name that is looked up.
    nvrtc_or_skip()
    import _helpers

    fake = _helpers.fresh("_fake_cupy.py", "gpuinv_tests_fake_cupy_kernels", monkeypatch)
    spec = kernels.kernel_spec(3, np.complex64)
    with fake.installed(monkeypatch):
        function = kernels._kernel(spec, 0)
        [module] = fake.loaded_modules
    assert module.data.startswith(b"\x7fELF")
    assert function.name.startswith("_ZN6gpuinv10inv_threadINS_4cplxIfEELi3E")
    assert function.name.encode() in module.data


def test_warm_up_compiles_in_parallel_into_both_caches(fresh_cache, monkeypatch):
    nvrtc_or_skip()
    report = kernels.warm_up([np.float32, "float64"], [2, 1, 2, 40], arch="sm_90", workers=2)
    # n = 40 is past KERNEL_MAX_N: cuBLAS's, nothing to compile.
    assert [(r["dtype"], r["n"]) for r in report] == [("float32", 1), ("float32", 2), ("float64", 1),
                                                     ("float64", 2)]
    assert {r["origin"] for r in report} == {"compiled"}
    assert all(r["shape"] == "thread" and r["seconds"] >= 0 for r in report)
    assert len(list(fresh_cache.glob("*.bin"))) == 4
    # The workers' binaries are in this process's cache: the engine only loads.
    spec = kernels.kernel_spec(2, np.float64)
    assert _nvrtc.compiled(kernels.kernel_source(), spec.name_expression, "90")[1] == "memory"
    monkeypatch.setattr(_nvrtc, "_memory", {})
    again = kernels.warm_up(["float32"], [1, 2], arch="90", workers=1)
    assert [r["origin"] for r in again] == ["disk", "disk"]
    # A shape dispatch does not pick, as the GPU check times it.
    group5 = kernels.KernelSpec(np.dtype(np.float32), 5, "group", 128, 16, 8)
    extra = kernels.warm_up(["float32"], [1], arch="90", workers=1, extra=[group5])
    assert [(r["n"], r["shape"], r["origin"]) for r in extra] == [(1, "thread", "memory"),
                                                                 (5, "group", "compiled")]


def test_warm_up_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        kernels.warm_up(["float32"], [0, 1], arch="90")
    with pytest.raises(TypeError, match="support float32"):
        kernels.warm_up(["float16"], [2], arch="90")
