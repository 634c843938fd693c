"""benchmarks/gpu_check.py on CPU: it imports, parses its arguments and formats
its tables without a GPU (the measurements themselves need one)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_a_gpu():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--out" in out and "--quick" in out


def test_parse_args(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path), "--quick"])
    assert args.out == tmp_path and args.quick and args.budget == 240 and args.repeats == 3
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    assert args.budget == 520 and args.repeats == 7
    assert args.budget < 540  # under 9 minutes
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])


def test_batch_count(gpu_check):
    assert gpu_check.batch_count(4, 8) == (256 << 20) // 128
    assert gpu_check.batch_count(512, 16) == 64
    assert gpu_check.batch_count(10**5, 8) == 1


def _fake_case(**over):
    case = {
        "input": "cupy", "dtype": "float64", "n": 4, "count": 1000,
        "times": {"gpuinv": [2.0, 1.0, 3.0], "cupy": [4.0, 4.0, 4.0], "torch": [1.0],
                  "numpy": [0.5]},
        "peer_count": {"numpy": 10},
        "floor_s": 0.5,
    }
    case.update(over)
    return case


def test_case_row_numbers(gpu_check):
    row = gpu_check.case_row(_fake_case())
    assert row["rate"] == 1000 / 2.0  # median of 1, 2, 3
    assert row["floor_fraction"] == 0.25
    assert row["cupy"] == 2.0 and row["torch"] == 0.5
    assert row["numpy"] == (0.5 / 10) / (2.0 / 1000)  # per matrix: numpy ran on 10
    assert row["jax"] is None


def test_format_table(gpu_check):
    table = gpu_check.format_table([_fake_case(), _fake_case(input="numpy", floor_s=None, n=512)])
    lines = table.splitlines()
    assert lines[0].startswith("| input | dtype | n | batch | gpuinv matrices/s")
    assert "| cupy | float64 | 4 | 1000 | 500 | 25.0% | 2.00x | 0.50x | - | 25.00x |" in lines
    assert "| numpy | float64 | 512 | 1000 | 500 | - |" in table


def test_crossover(gpu_check):
    sizes = [1, 2, 3, 4]
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 0.5, 2, 0.5]) == 4
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 0.5, 0.5, 0.5]) == 2
    assert gpu_check.crossover(sizes, [1, 1, 1, 1], [2, 2, 2, 2]) is None


def test_recorder_writes_partial_results(gpu_check, tmp_path):
    rec = gpu_check.Recorder(tmp_path, deadline=0.0)
    rec.data["machine"] = {"gpu": "Fake GPU", "cupy": "0", "cuda_runtime": 1, "commit": "abc"}
    rec.data["floors"]["d2d_bytes_per_s"] = 3e12
    rec.data["cases"].append(_fake_case())
    rec.save()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["cases"][0]["times"]["gpuinv"] == [2.0, 1.0, 3.0]
    md = (tmp_path / "results.md").read_text()
    assert "Fake GPU" in md and "d2d_bytes_per_s 3000.0" in md and "| cupy | float64 | 4 |" in md


def test_bench_case_runs_against_the_fake_cupy(gpu_check, tmp_path, monkeypatch):
    # The benchmark code path end to end, with tests/_fake_cupy.py standing
    # in for CuPy: catches errors that would waste a rare GPU run.
    spec = importlib.util.spec_from_file_location(
        "gpuinv_tests_fake_cupy_bench", Path(__file__).with_name("_fake_cupy.py"))
    fake = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpuinv_tests_fake_cupy_bench", fake)
    spec.loader.exec_module(fake)
    # The stand-in has no NVRTC: the engine's small-n route is cuBLAS here.
    from gpuinv.engines import cuda as cuda_module

    monkeypatch.setattr(cuda_module, "cuda_route", lambda n, dtype: "cublas")
    with fake.installed(monkeypatch):
        rec = gpu_check.Recorder(tmp_path, deadline=float("inf"))
        rec.data["floors"] = {"d2d_bytes_per_s": 3e12, "h2d_pinned_bytes_per_s": 5e10,
                              "d2h_pinned_bytes_per_s": 5e10}
        for n, dtype in [(3, "float64"), (4, "complex64")]:
            gpu_check.bench_case(rec, {}, n, dtype, repeats=2, batch_bytes=n * n * 16 * 50,
                                 per_case=30)
        monkeypatch.setattr(gpu_check, "CROSSOVER_SIZES", [2000, 8000])
        monkeypatch.setattr(gpu_check, "CROSSOVER_N", (2, 3))
        monkeypatch.setattr(gpu_check, "ROUTE_N", (3, 5))
        monkeypatch.setattr(gpu_check, "ROUTE_BATCH_BYTES", 4000)
        gpu_check.measure_crossover(rec, 2)
        gpu_check.measure_route_threshold(rec, 2)
    assert not rec.data["errors"], rec.data["errors"]
    assert set(rec.data["crossover"]) == {"n=2 float64", "n=3 float64"}
    assert rec.data["route_threshold"]["float32 n=5"]["faster"] in ("cublas", "cusolver")
    cases = rec.data["cases"]
    assert [(c["input"], c["n"]) for c in cases] == [("cupy", 3), ("numpy", 3), ("cupy", 4),
                                                    ("numpy", 4)]
    for c in cases:
        assert c["times"]["gpuinv"] and c["times"]["cupy"] and c["times"]["numpy"]
    md = (tmp_path / "results.md").read_text()
    assert "| cupy | float64 | 3 |" in md and "| numpy | complex64 | 4 |" in md


def test_main_plans_every_case_and_writes_results(gpu_check, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "gpuinv_tests_fake_cupy_main", Path(__file__).with_name("_fake_cupy.py"))
    fake = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpuinv_tests_fake_cupy_main", fake)
    spec.loader.exec_module(fake)
    seen = []

    def floors(rec, repeats, quick):
        rec.data["floors"]["d2d_bytes_per_s"] = 1e12

    def case(rec, peers, n, dtype, repeats, batch_bytes, per_case):
        seen.append((n, np.dtype(dtype).name, batch_bytes))
        assert per_case > 3

    monkeypatch.setattr(gpu_check, "measure_floors", floors)
    monkeypatch.setattr(gpu_check, "bench_case", case)
    monkeypatch.setattr(gpu_check, "_load_peers", dict)
    monkeypatch.setattr(gpu_check, "measure_crossover", lambda rec, r: seen.append("crossover"))
    monkeypatch.setattr(gpu_check, "measure_route_threshold", lambda rec, r: seen.append("route"))
    with fake.installed(monkeypatch):
        assert gpu_check.main(["--out", str(tmp_path / "res"), "--skip-tests"]) == 0
    sizes = [n for n, dt, _ in seen[:-2] if dt == "float64"]
    assert sizes == gpu_check.SIZES
    assert {dt for _, dt, _ in seen[:-2]} == {"float32", "float64", "complex64", "complex128"}
    assert seen[-2:] == ["crossover", "route"]
    machine = json.loads((tmp_path / "res" / "machine.json").read_text())
    assert machine["gpu"] == "Fake GPU" and "commit" in machine
    assert (tmp_path / "res" / "results.md").exists()
