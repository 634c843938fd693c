"""benchmarks/gpu_check.py on the CPU: its pure helpers, its pytest driver, and every
section end to end on the CuPy stand-in (tests/_fake_cupy.py), so that nothing a CPU
can see wastes a rare GPU run.

On the stand-in the kernels compile for real (NVRTC needs no GPU) and load through
the stand-in's Module, but cannot run: the launch is replaced by a NumPy inverse.
``--tiny`` shrinks every batch to a few KB so that a whole run takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import _helpers
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpuinv_benchmarks_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def strict_json(path: Path):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name} in {path}")

    return json.loads(path.read_text(), parse_constant=no_constants)


# --- pure helpers -----------------------------------------------------------------------


def test_help_runs_without_a_gpu():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--out", "--quick", "--section", "--commit", "--tiny"):
        assert flag in out


def test_parse_args_budgets_fit_one_device_call_each(gpu_check, tmp_path, monkeypatch):
    monkeypatch.delenv("GPUINV_CHECK_TINY", raising=False)
    for section in ("tests", "bench"):
        args = gpu_check.parse_args(["--out", str(tmp_path), "--section", section])
        # One device call runs 600 s at most; keep a minute for start-up and the files.
        assert args.budget <= 540 and args.repeats == 7 and not args.tiny
        quick = gpu_check.parse_args(["--out", str(tmp_path), "--section", section, "--quick"])
        assert quick.budget < args.budget and quick.repeats == 3
    both = gpu_check.parse_args(["--out", str(tmp_path)])
    assert both.section == "all" and both.budget == sum(gpu_check.BUDGET.values())
    # Both sections together stay inside the 15 minutes of device time a task gets.
    assert sum(gpu_check.BUDGET.values()) + 2 * 60 <= 15 * 60
    monkeypatch.setenv("GPUINV_CHECK_TINY", "1")
    assert gpu_check.parse_args(["--out", str(tmp_path)]).tiny
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", str(tmp_path), "--section", "both"])


def test_the_commit_comes_from_the_argument_the_environment_or_git(gpu_check, tmp_path):
    assert gpu_check.resolve_commit("abc123", {"GPUINV_COMMIT": "zzz"}) == {
        "commit": "abc123", "commit_source": "--commit"}
    assert gpu_check.resolve_commit(None, {"GPUINV_COMMIT": "def456"}) == {
        "commit": "def456", "commit_source": "GPUINV_COMMIT"}
    # The device gets the working tree without .git: then it is unknown, and says why.
    unknown = gpu_check.resolve_commit(None, {}, repo=tmp_path)
    assert unknown["commit"] is None and "GPUINV_COMMIT" in unknown["commit_source"]


def test_batch_count_and_peer_batches(gpu_check):
    assert gpu_check.batch_count(4, 8) == (256 << 20) // 128
    assert gpu_check.batch_count(512, 16) == 64
    assert gpu_check.batch_count(10**5, 8) == 1
    assert gpu_check.peer_batch(1000) == (1000, 1000)
    assert gpu_check.peer_batch(65535) == (65535, 65535)
    # Never more than cuBLAS's 65535 matrices in one call, whole calls only, bounded.
    assert gpu_check.peer_batch(65536) == (65535, 65535)
    assert gpu_check.peer_batch(10 * 65535 + 7) == (10 * 65535, 65535)
    assert gpu_check.peer_batch(16 << 20) == (gpu_check.PEER_MAX_CALLS * 65535, 65535)
    assert gpu_check._chunks(7, 3) == [(0, 3), (3, 6), (6, 7)]


def _fake_case(**over):
    case = {
        "input": "cupy", "dtype": "float64", "n": 4, "count": 1000, "route": "kernel",
        "times": {"gpuinv": [2.0, 1.0, 3.0], "cupy": [4.0, 4.0, 4.0], "torch": [1.0],
                  "numpy": [0.5]},
        "peer_count": {"numpy": 10},
        "floor_s": 0.5,
        "model": {"ceiling_matrices_per_s": 2000.0, "hbm_share_ceiling": 0.8, "limiter": "issue"},
    }
    case.update(over)
    return case


def test_case_row_numbers(gpu_check):
    row = gpu_check.case_row(_fake_case())
    assert row["rate"] == 1000 / 2.0  # median of 1, 2, 3
    assert row["floor_fraction"] == 0.25
    assert row["model_ceiling"] == 2000.0 and row["model_fraction"] == 0.25 and row["limiter"] == "issue"
    assert row["cupy"] == 2.0 and row["torch"] == 0.5
    assert row["numpy"] == (0.5 / 10) / (2.0 / 1000)  # per matrix: numpy ran on 10
    assert row["jax"] is None and row["cublas_matinv"] is None
    failed = gpu_check.case_row(_fake_case(times={"gpuinv": None, "cupy": None}, model=None))
    assert failed["rate"] is None and failed["cupy"] is None and failed["model_ceiling"] is None


def test_format_table(gpu_check):
    table = gpu_check.format_table([_fake_case(), _fake_case(input="numpy", floor_s=None, n=512,
                                                             route=None, model=None)])
    lines = table.splitlines()
    assert lines[0].startswith("| input | dtype | n | route | batch | gpuinv matrices/s")
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert ("| cupy | float64 | 4 | kernel | 1000 | 500 | 25.0% | 2k | 25.0% | issue | 2.00x | 0.50x | - | "
            "- | 25.00x |") in lines
    assert "| numpy | float64 | 512 | - | 1000 | 500 | - | - | - | - |" in table


def test_crossover(gpu_check):
    sizes = [1, 2, 3, 4]
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 0.5, 2, 0.5]) == 4
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 0.5, 0.5, 0.5]) == 2
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 2, 2, 2]) is None
    assert gpu_check.crossover(sizes, [1, 1, 1, None], [2, 0.5, 0.5, 0.5]) is None  # a failed run


def test_recorder_writes_valid_partial_results(gpu_check, tmp_path):
    rec = gpu_check.Recorder(tmp_path, deadline=0.0)
    rec.data["machine"] = {"gpu": "Fake GPU", "cupy": "0", "cuda_runtime": 1, "commit": "abc"}
    rec.data["floors"]["d2d_bytes_per_s"] = 3e12
    rec.data["cases"].append(_fake_case(times={"gpuinv": [1.0, float("nan")], "cupy": [np.float64(2.0)]}))
    rec.skip("n=512 float32", "out of time")
    rec.save()
    data = strict_json(tmp_path / "results.json")
    assert data["cases"][0]["times"] == {"gpuinv": [1.0, None], "cupy": [2.0]}
    md = (tmp_path / "results.md").read_text()
    assert "Fake GPU" in md and "d2d_bytes_per_s 3000.0" in md and "| cupy | float64 | 4 |" in md
    assert "- n=512 float32: out of time" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_model_ceilings_are_read_when_the_file_exists(gpu_check, tmp_path):
    assert gpu_check.load_model(tmp_path / "missing.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert gpu_check.load_model(tmp_path / "bad.json") == {}
    path = tmp_path / "model_sm90.json"
    path.write_text(json.dumps({"kernels": [
        {"dtype": "float64", "n": 8, "shape": "thread", "arch": "sm_90", "ceiling_matrices_per_s": 4.7e9,
         "hbm_share_ceiling": 1.0, "limiter": "hbm", "registers": 180},
        {"dtype": "float64", "n": 8, "shape": "thread", "arch": "sm_80", "ceiling_matrices_per_s": 2e9,
         "hbm_share_ceiling": 0.9, "limiter": "issue"},
        {"dtype": "float64", "n": 8, "shape": "thread", "kind": "chol-thread", "arch": "sm_90",
         "ceiling_matrices_per_s": 2.6e9, "hbm_share_ceiling": 0.56, "limiter": "hbm_occupancy"},
    ]}))
    model = gpu_check.load_model(path)
    assert gpu_check.model_entry(model, np.float64, 8, "thread", "90") == {
        "ceiling_matrices_per_s": 4.7e9, "hbm_share_ceiling": 1.0, "limiter": "hbm"}
    assert gpu_check.model_entry(model, "float64", 8, "thread", "80")["limiter"] == "issue"
    assert gpu_check.model_entry(model, "float64", 8, "chol-thread", "90")["limiter"] == "hbm_occupancy"
    assert gpu_check.model_entry(model, "float64", 8, "group", "90") is None
    assert gpu_check.model_entry(model, "float64", 8, "thread", None) is None


# --- the pytest driver ----------------------------------------------------------------------


def test_jax_preallocation_is_off_before_anything_starts(tmp_path):
    # Importing the script sets it, before it can import JAX or start a child;
    # a value the caller chose stays.
    code = ("import importlib.util, os, sys\n"
            "s = importlib.util.spec_from_file_location('g', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(s); sys.modules['g'] = m; s.loader.exec_module(m)\n"
            "print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'], 'jax' in sys.modules)\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("XLA_")}
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["false", "False"]
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "true"
    out = subprocess.run([sys.executable, "-c", code, str(SCRIPT)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out[0] == "true"


def test_conftest_turns_jax_preallocation_off():
    # Loading tests/conftest.py (which pytest does before any test module) sets both.
    conftest = Path(__file__).with_name("conftest.py")
    code = ("import os, runpy, sys; runpy.run_path(sys.argv[1]); "
            "print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'], os.environ['XLA_PYTHON_CLIENT_ALLOCATOR'])")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("XLA_")}
    out = subprocess.run([sys.executable, "-c", code, str(conftest)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["false", "platform"]


def test_pytest_command(gpu_check):
    cmd = gpu_check.pytest_command(["tests/a.py"], quick=False, workers=8, have_xdist=True, have_timeout=True)
    assert cmd[:3] == [sys.executable, "-m", "pytest"]
    assert "-v" in cmd and "--tb=short" in cmd and "-rfE" in cmd
    assert cmd[cmd.index("-n") + 1] == "8" and "--timeout=150" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "gpu" and cmd[-1] == "tests/a.py"
    plain = gpu_check.pytest_command(["t"], quick=True, workers=8, have_xdist=False, have_timeout=False)
    assert "-n" not in plain and not any(c.startswith("--timeout") for c in plain)
    assert plain[plain.index("-m", 3) + 1] == "gpu and not slow"


def test_gpu_test_files_put_the_gpu_only_ones_first(gpu_check):
    files = gpu_check.gpu_test_files()
    assert files[:3] == list(gpu_check.FIRST_TEST_FILES)
    assert len(files) == len(set(files)) > 3


SAMPLE_LOG = """\
tests/test_a.py::test_one PASSED                                         [ 33%]
tests/test_a.py::test_two FAILED                                         [ 66%]
[gw1] [ 70%] SKIPPED tests/test_b.py::test_three
=================================== FAILURES ===================================
___________________________________ test_two ___________________________________
tests/test_a.py:5: in test_two
    assert 1 == 2
E   assert 1 == 2
=========================== short test summary info ============================
FAILED tests/test_a.py::test_two - assert 1 == 2
ERROR tests/test_b.py::test_four - RuntimeError: boom
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!! KeyboardInterrupt !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
============ 1 failed, 1 passed, 1 skipped, 1 error, 2 warnings in 5.01s ============
"""


def test_parse_pytest_log(gpu_check):
    parsed = gpu_check.parse_pytest_log(SAMPLE_LOG)
    assert parsed["summary"] == "1 failed, 1 passed, 1 skipped, 1 error, 2 warnings in 5.01s"
    assert parsed["counts"] == {"failed": 1, "passed": 1, "skipped": 1, "error": 1, "warning": 2}
    assert parsed["failed"] == ["ERROR tests/test_b.py::test_four", "FAILED tests/test_a.py::test_two"]
    assert parsed["outcomes_seen"] == {"PASSED": 1, "FAILED": 2, "SKIPPED": 1, "ERROR": 1}
    assert parsed["interrupted"]
    empty = gpu_check.parse_pytest_log("")
    assert empty["summary"] is None and empty["failed"] == [] and not empty["interrupted"]


def test_the_log_is_read_whatever_bytes_it_holds(gpu_check, tmp_path):
    path = tmp_path / "pytest.log"
    path.write_bytes(b"tests/t.py::test_x PASSED\n\xff\xfe broken \xc3\n== 1 passed in 0.1s ==\n")
    text = gpu_check.read_log(path)
    assert "\ufffd" in text and gpu_check.parse_pytest_log(text)["summary"] == "1 passed in 0.1s"
    assert gpu_check.read_log(tmp_path / "missing.log") == ""


HANGING_TESTS = """\
import os, signal, time
import pytest

@pytest.mark.gpu
def test_passes():
    pass

@pytest.mark.gpu
def test_fails():
    print("some output \\xff")
    assert 1 + 1 == 3, "wrong sum"

@pytest.mark.gpu
def test_hangs():
    if os.environ.get("IGNORE_SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    open(os.environ["HANG_MARK"], "w").close()
    time.sleep(120)

@pytest.mark.gpu
def test_never_reached():
    pass
"""


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_a_pytest_past_its_deadline_is_interrupted_and_still_reports(gpu_check, tmp_path, ignore_sigint):
    tests = tmp_path / "test_hanging.py"
    tests.write_text(HANGING_TESTS)
    cmd = gpu_check.pytest_command([str(tests)], quick=False, workers=1, have_xdist=False, have_timeout=False)
    mark = tmp_path / "hanging"
    env = dict(__import__("os").environ, PYTHONUNBUFFERED="1", HANG_MARK=str(mark))
    if ignore_sigint:
        env["IGNORE_SIGINT"] = "1"
    log = tmp_path / "pytest.log"
    # The deadline must fall in the hang (120 s), after its signal handler is
    # set: 5 s is ample for pytest's start-up, and where a loaded machine's was
    # slower (no mark), the run is repeated with 30 s. The grace only waits out
    # pytest's report after SIGINT, which the SIGINT-ignoring run never writes.
    for wait in (5, 30):
        start = time.monotonic()
        result = gpu_check.run_pytest(cmd, log, time.monotonic() + wait, env, grace=2 if ignore_sigint else 10)
        if mark.exists():
            break
    assert mark.exists(), gpu_check.read_log(log)
    assert time.monotonic() - start < wait + 30
    parsed = gpu_check.parse_pytest_log(gpu_check.read_log(log))
    assert parsed["outcomes_seen"].get("PASSED") == 1
    if ignore_sigint:  # pytest cannot report: killed after the grace time, the log is kept
        assert result["stopped"] == "killed"
    else:  # SIGINT: pytest prints the failure, its traceback and the summary
        assert result["stopped"] == "sigint"
        assert parsed["interrupted"] and len(parsed["failed"]) == 1
        assert parsed["failed"][0].startswith("FAILED ")
        assert parsed["failed"][0].endswith("test_hanging.py::test_fails")
        assert "wrong sum" in gpu_check.read_log(log)
        assert parsed["counts"]["failed"] == 1 and parsed["counts"]["passed"] == 1


# --- cuBLAS matinvBatched through ctypes ---------------------------------------------------


def test_loaded_library_finds_cublas_not_cublaslt(gpu_check):
    maps = """\
7f1 r-xp 00000000 08:01 1 /usr/lib/libcublasLt.so.12.8.4.1
7f2 r-xp 00000000 08:01 2 /opt/venv/nvidia/cublas/lib/libcublas.so.12
7f3 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
"""
    assert gpu_check.loaded_library("libcublas", maps) == "/opt/venv/nvidia/cublas/lib/libcublas.so.12"
    assert gpu_check.loaded_library("libcublas", maps.splitlines()[0]) is None
    assert gpu_check.loaded_library("libcublas", "") is None


# --- end to end on the CuPy stand-in ------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernel-cache")


def numpy_launch(spec, a, out, info, rcond=None, *, max_blocks=None, b=None):
    """Stands in for the kernel launch (gpuinv.kernels._launch's arguments): the
    stand-in cannot run CUDA code. The CPU engine computes what the kernel would."""
    import gpuinv

    x = np.asarray(a).view(np.ndarray)
    o = np.asarray(out).view(np.ndarray)
    flags = np.asarray(info).view(np.ndarray)
    if spec.op == "solve":
        res = gpuinv.solve_ex(x, np.asarray(b).view(np.ndarray), device="cpu")
        o[...], flags[...] = res.solution, res.info
        return
    structure = {"inv": "general", "chol": "positive definite", "tril": "lower triangular",
                 "triu": "upper triangular", "diag": "diagonal"}[spec.op]
    res = gpuinv.inv_ex(x, assume_a=structure, lower=spec.op == "chol", rcond=rcond is not None, device="cpu")
    o[...], flags[...] = res.inverse, res.info
    if rcond is not None:
        np.asarray(rcond).view(np.ndarray)[...] = res.rcond


@pytest.fixture
def fake(monkeypatch, kernel_cache):
    module = _helpers.fresh("_fake_cupy.py", "gpuinv_tests_fake_cupy_check", monkeypatch)
    from gpuinv import kernels
    from gpuinv.engines import cuda_engine
    from gpuinv.kernels import _nvrtc

    pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="the kernels compile with CuPy's NVRTC")
    try:
        _nvrtc.load_nvrtc()
    except ImportError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")
    monkeypatch.setenv("GPUINV_KERNEL_CACHE_DIR", str(kernel_cache))
    monkeypatch.setattr(kernels, "_launch", numpy_launch)
    kernels._kernel.cache_clear()  # modules loaded on the stand-in stay there
    # gpuinv caches one CUDA engine per device, with its pinned staging and
    # streams: each test loads a fresh stand-in, which knows none of an
    # earlier one's streams or memory, so none may reach the next test.
    cuda_engine.cache_clear()
    numerics = _helpers.fresh("_fake_cupy_numerics.py", "gpuinv_tests_fake_cupy_numerics_check")
    with module.installed(monkeypatch):
        numerics.install(module, monkeypatch, [])  # what issue 10's routes call (the numerics unit)
        yield module
    cuda_engine.cache_clear()
    kernels._kernel.cache_clear()


PASSING_AND_FAILING = """\
import os
import pytest

@pytest.mark.gpu
def test_ok():
    # JAX must not preallocate device memory in the test process (issue 11, item 4).
    assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"

@pytest.mark.gpu
def test_broken():
    raise RuntimeError("on purpose")
"""


def _run(gpu_check, out, *extra):
    return gpu_check.main(["--out", str(out), "--tiny", "--workers", "2", *extra])


def test_matinv_peer_inverts_in_calls_of_at_most_the_chunk(gpu_check, fake):
    calls = []

    def matinv(handle, n, a_ptrs, lda, c_ptrs, ldc, info_ptr, batch):
        # What cublas<t>matinvBatched does, on the stand-in's host "device" memory.
        assert handle == 7 and lda == ldc == n and 0 < batch <= 3
        calls.append(batch)
        aps = fake._mem(a_ptrs, 8 * batch, np.uint64)
        cps = fake._mem(c_ptrs, 8 * batch, np.uint64)
        for i in range(batch):
            a = fake._colmajor(int(aps[i]), n, np.float64)
            fake._colmajor(int(cps[i]), n, np.float64)[...] = np.linalg.inv(a)
        fake._mem(info_ptr, 4 * batch, np.int32)[...] = 0
        return 0

    streams = []
    peer = gpu_check.MatinvBatched({np.dtype(np.float64): matinv}, 7, lambda h, s: streams.append(s))
    a = gpu_check.random_device_stack(7, 3, np.float64)
    out, info = peer.prepare(a, chunk=3)()
    assert calls == [3, 3, 1] and streams == [0]
    np.testing.assert_allclose(np.asarray(out), np.linalg.inv(np.asarray(a)), rtol=1e-12)
    assert not np.asarray(info).any()
    broken = gpu_check.MatinvBatched({np.dtype(np.float64): lambda *args: 13}, 7, lambda h, s: None)
    with pytest.raises(RuntimeError, match="cublasDmatinvBatched returned status 13"):
        broken.prepare(a, chunk=3)()
    with pytest.raises(ValueError, match="n < 32"):
        peer.prepare(gpu_check.random_device_stack(1, 32, np.float64), chunk=3)
    # On the stand-in there is no compiled cuBLAS binding: the peer is absent, not a crash.
    with pytest.raises(RuntimeError, match="not CuPy's compiled cuBLAS binding"):
        gpu_check.MatinvBatched.from_cupy()


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_section_end_to_end(gpu_check, fake, tmp_path, quick):
    tests = tmp_path / "test_on_gpu.py"
    tests.write_text(PASSING_AND_FAILING)
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"kernels": [
        {"dtype": "float64", "n": 2, "shape": "thread", "arch": "sm_90", "ceiling_matrices_per_s": 5.8e10,
         "hbm_share_ceiling": 0.77, "limiter": "issue"}]}))
    out = tmp_path / "out"
    extra = ["--quick"] if quick else []
    rc = _run(gpu_check, out, "--section", "all", "--budget", "600", "--commit", "feedbeef",
              "--tests", str(tests), "--model", str(model), *extra)
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"machine.json", "tests.json", "tests.md", "pytest-gpu.log", "gpu_check-tests.log",
                     "results.json", "results.md", "gpu_check-bench.log"}
    machine = strict_json(out / "machine.json")
    assert machine["gpu"] == "Fake GPU" and machine["commit"] == "feedbeef"
    assert machine["commit_source"] == "--commit" and machine["compute_capability"] == "90"

    tests_data = strict_json(out / "tests.json")
    assert tests_data["warm_up"]["kernels"] == 4  # float32 and float64 at n = 1, 2 when tiny
    t = tests_data["tests"]
    assert t["stopped"] is None and t["rc"] == 1
    assert t["counts"]["failed"] == 1 and t["counts"]["passed"] == 1
    assert len(t["failed"]) == 1 and t["failed"][0].endswith("test_on_gpu.py::test_broken")
    assert "-v" in t["command"] and "--tb=short" in t["command"]
    assert "on purpose" in (out / "pytest-gpu.log").read_text(errors="replace")
    assert "test_broken" in (out / "tests.md").read_text()
    assert "pytest:" in (out / "gpu_check-tests.log").read_text()

    data = strict_json(out / "results.json")
    assert data["errors"] == [] and data["skipped"] == [] and "aborted" not in data
    assert data["machine"]["commit"] == "feedbeef"
    assert set(data["floors"]) == {"d2d_bytes_per_s", "h2d_pinned_bytes_per_s", "d2h_pinned_bytes_per_s"}
    peers = data["peers"]
    assert peers["cupy"] == peers["numpy"] == "ok"
    for absent in ("torch", "jax", "cublas_matinv"):  # no CUDA torch/JAX, no cuBLAS on the stand-in
        assert peers[absent].startswith("absent: ")
    cases = data["cases"]
    order = [(c["input"], c["dtype"], c["n"]) for c in cases]
    # What sets the thresholds comes first: n = 2, 4 (tiny) float64 then float32, CuPy input.
    assert order[:4] == [("cupy", "float64", 2), ("cupy", "float64", 4), ("cupy", "float32", 2),
                         ("cupy", "float32", 4)]
    assert ("cupy", "complex128", 2) in order and ("numpy", "float32", 3) in order
    for c in cases:
        assert c["times"]["gpuinv"] and c["times"]["cupy"] and not c["peer_errors"], c
        if c["input"] == "cupy":  # whole calls of at most 50 matrices, the tiny run's 65535
            chunk = c["peer_call_matrices"]
            assert chunk <= 50 and c["peer_count"]["cupy"] % chunk == 0
    first = cases[0]
    assert first["route"] == "kernel" and first["model"]["limiter"] == "issue"
    assert cases[1]["model"] is None  # n = 4 is not in this model file
    for key in ("kernel_threshold", "shape_threshold", "crossover", "route_threshold"):
        assert data[key], key
    assert set(data["kernel_threshold"]["float64 n=2"]["matrices_per_s"]) == {"kernel", "cublas"}
    assert data["kernel_threshold"]["float64 n=2"]["model"]["limiter"] == "issue"
    assert set(data["shape_threshold"]["float64 n=5"]["matrices_per_s"]) == {"thread", "group"}
    # Issue 10's targets: every time taken, and the ratios in the table.
    numerics = data["numerics"]
    assert [(c["dtype"], c["n"]) for c in numerics] == [("float64", 2), ("float64", 4), ("float32", 2),
                                                        ("float32", 4)]
    for c in numerics:
        assert set(c["times"]) == {"inv_ex", "inv_ex_rcond", "general_on_spd", "positive_definite",
                                   "general_on_tri", "lower_triangular", "solve", "inv_matmul"}
        assert all(c["times"].values()), c
    md = (out / "results.md").read_text()
    assert "## numerics (issue 10 targets)" in md and "| float32 | 4 |" in md
    assert "| cupy | float64 | 2 | kernel |" in md and "## kernel_threshold" in md
    assert "thresholds: cupy input float64 n=2" in (out / "gpu_check-bench.log").read_text()


def test_a_run_cut_short_keeps_valid_outputs(gpu_check, fake, tmp_path, monkeypatch):
    # The deadline passes in the middle of the third case: that case finishes
    # with what it has, every later one is recorded as skipped, files stay valid.
    real = gpu_check.Bench.device_case
    seen = []

    def device_case(self, n, dtype, cap, peers):
        seen.append(n)
        if len(seen) == 3:
            self.rec.deadline = time.monotonic() - 1
        return real(self, n, dtype, cap, peers)

    monkeypatch.setattr(gpu_check.Bench, "device_case", device_case)
    out = tmp_path / "out"
    assert _run(gpu_check, out, "--section", "bench", "--budget", "300") == 0
    data = strict_json(out / "results.json")
    assert len(data["cases"]) == 3 and len(seen) == 3
    skipped = {s["what"]: s["why"] for s in data["skipped"]}
    assert "cupy input float32 n=4" in skipped and "kernel_threshold" in skipped
    assert "numpy input float64 n=2" in skipped
    assert all(why.startswith("out of time") for why in skipped.values())
    assert data["cases"][2]["times"]["gpuinv"]
    md = (out / "results.md").read_text()
    assert "## Skipped" in md and "kernel_threshold: out of time" in md


def test_a_failing_peer_is_recorded_and_the_others_go_on(gpu_check, fake, tmp_path, monkeypatch):
    def broken_inv(a):
        raise RuntimeError("CUSOLVER_STATUS_INVALID_VALUE")

    monkeypatch.setattr(fake.linalg, "inv", broken_inv)
    out = tmp_path / "out"
    assert _run(gpu_check, out, "--section", "bench", "--budget", "300") == 0
    data = strict_json(out / "results.json")
    assert "aborted" not in data and data["skipped"] == []
    for c in data["cases"]:
        assert c["times"]["gpuinv"] and "CUSOLVER_STATUS_INVALID_VALUE" in c["peer_errors"]["cupy"]
    assert any("cupy cupy input" in e or "cupy n=" in e for e in data["errors"])


def test_a_sticky_cuda_error_stops_the_section_cleanly(gpu_check, fake, tmp_path, monkeypatch):
    # After an illegal address every later CUDA call fails: detect it, keep what
    # was measured, skip the rest with the reason, exit 3.
    broken = []

    def illegal(a):
        broken.append(True)
        raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    monkeypatch.setattr(fake.linalg, "inv", illegal)
    monkeypatch.setattr(gpu_check, "context_error",
                        lambda: "cudaErrorIllegalAddress" if broken else None)
    out = tmp_path / "out"
    assert _run(gpu_check, out, "--section", "bench", "--budget", "300") == 3
    data = strict_json(out / "results.json")
    assert "cupy input float64 n=2" in data["aborted"] and "cudaErrorIllegalAddress" in data["aborted"]
    assert len(data["cases"]) == 1 and data["cases"][0]["times"]["gpuinv"]
    skipped = {s["what"]: s["why"] for s in data["skipped"]}
    assert "cupy input float64 n=4" in skipped and "route_threshold" in skipped
    assert set(skipped.values()) == {"not run: the CUDA context was lost"}
    assert "Stopped early" in (out / "results.md").read_text()
