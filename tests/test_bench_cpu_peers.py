"""benchmarks/bench_cpu_peers.py runs end to end (a smoke test: nothing is timed here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_peers.py"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("bench_cpu_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_json_and_plot(bench, tmp_path, monkeypatch, capsys):
    pytest.importorskip("scipy")
    monkeypatch.setitem(sys.modules, "torch", None)  # not importable: skipped with a note
    out = tmp_path / "peers.json"
    argv = ["--n", "2", "5", "--dtype", "float32", "float64", "--mib", "0.05", "--repeats", "1",
            "--peers", "numpy", "scipy", "torch", "--json", str(out)]
    if importlib.util.find_spec("matplotlib") is not None:
        argv += ["--plot", str(tmp_path / "peers.png")]
    assert bench.main(argv) == 0
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert [(r["dtype"], r["n"]) for r in rows] == [
        ("float32", 2), ("float32", 5), ("float64", 2), ("float64", 5)]
    for r in rows:
        assert set(r["ratio"]) == {"numpy", "scipy"}
        assert r["gpuinv_matrices_per_s"] > 0
        assert set(r["seconds"]["gpuinv"]) == {"wall_median", "wall_min", "cpu_median", "cpu_min"}
    assert "torch" in results["skipped"]
    assert "torch skipped" in capsys.readouterr().out
    if "--plot" in argv:
        assert (tmp_path / "peers.png").stat().st_size > 0


def test_routes_and_threads_modes(bench, tmp_path):
    pytest.importorskip("scipy")
    out = tmp_path / "routes.json"
    assert bench.main(["--routes", "--n", "32", "--dtype", "float64", "--repeats", "1",
                       "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["routes"]
    assert row["n"] == 32 and row["ratio"] > 0
    out = tmp_path / "threads.json"
    assert bench.main(["--threads", "--n", "128", "--dtype", "float64", "--mib", "0.5",
                       "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["threads"]
    assert row["policy_threads"] == 1 and row["ratio"] > 0
    # The pool with OpenBLAS at one thread, where a setter was found (Linux, NumPy's OpenBLAS).
    assert row.get("ratio_pool_blas1", 1.0) > 0


def test_positive_definite_table(bench, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "pos.json"
    assert bench.main(["--pos", "--n", "3", "--dtype", "complex64", "--mib", "0.05", "--repeats", "1",
                       "--peers", "numpy", "torch", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["pos"] is True
    (row,) = results["rows"]
    assert row["n"] == 3 and set(row["ratio"]) == {"numpy", "torch"}
    # The stacks are positive definite: torch's Cholesky succeeded on them.
    a = bench.spd_stack(3, "complex64", 0.05, __import__("numpy").random.default_rng(0))
    assert (__import__("numpy").linalg.eigvalsh(a) > 0).all()
