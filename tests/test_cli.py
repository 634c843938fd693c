"""The ``gpuinv`` command: in process through ``main`` and as ``python -m gpuinv``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuinv
from gpuinv import cli
from gpuinv.cli.harness import Timing, batch_for, time_call
from gpuinv.cli.info import auto_engine_for
from gpuinv.cli.progress import make_progress

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "gpuinv", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _stack(shape, seed=0):
    n = shape[-1]
    return np.random.default_rng(seed).standard_normal(shape) + n * np.eye(n)


@pytest.fixture
def failing(tmp_path):
    a = _stack((50, 3, 3, 3))
    a[4, 1] = 0.0  # singular, step 1
    a[31, 2, 1, 1] = np.inf
    path = tmp_path / "a.npy"
    np.save(path, a)
    return a, path


# --------------------------------------------------------------------- info


def test_info_in_process(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"gpuinv: {gpuinv.__version__}" in out
    assert f"numpy: {np.__version__}" in out
    assert "CUDA" in out
    assert "(1000000, 4, 4) float64" in out
    # Without a usable GPU every example stays on the CPU, and says why.
    if gpuinv._device.cuda_unavailable_reason() is not None:
        assert "cpu (closed form)" in out and "cpu (lapack)" in out
        assert "none usable" in out or "not usable" in out


def test_auto_engine_for_allocates_nothing():
    # 2**40 matrices of 4x4 float64 would be 128 TiB; the operand is a broadcast view.
    assert auto_engine_for((1 << 40, 4, 4), "float64").startswith(("cpu", "cuda"))


def test_info_subprocess(tmp_path):
    proc = run_module("info", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'engine picked by device="auto"' in proc.stdout


def test_no_command_and_bad_arguments(capsys):
    assert cli.main([]) == 2
    assert cli.main(["invert"]) == 2  # argparse: IN and -o are required
    assert cli.main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out


# ------------------------------------------------------------------- invert


@pytest.mark.parametrize("chunk", [None, 7])
def test_invert_npy_round_trip(tmp_path, capsys, chunk):
    a = _stack((40, 5, 4, 4))
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, a)
    argv = ["invert", str(src), "-o", str(dst)] + (["--chunk", str(chunk)] if chunk else [])
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    np.testing.assert_allclose(np.load(dst), np.linalg.inv(a), rtol=1e-10)
    info = np.load(tmp_path / "out.info.npy")
    assert info.shape == (40, 5) and info.dtype == np.int32 and not info.any()
    assert "inverted 200 of 200 matrices (4x4, float64 -> float64)" in out
    assert "singular: 0" in out and "non-finite: 0" in out
    assert not list(tmp_path.glob("*.partial"))


@pytest.fixture
def inv_ex_calls(monkeypatch):
    """The stacks the command passes to ``gpuinv.inv_ex`` (it calls the public name), in order."""
    seen = []
    real = gpuinv.inv_ex

    def spy(a, **kw):
        seen.append(a)
        return real(a, **kw)

    monkeypatch.setattr(gpuinv, "inv_ex", spy)
    return seen


def test_invert_reads_input_memory_mapped(tmp_path, inv_ex_calls):
    src = tmp_path / "in.npy"
    np.save(src, _stack((10, 3, 3)))
    seen = inv_ex_calls
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy"), "--chunk", "4", "-q"]) == 0
    assert len(seen) == 3
    assert all(isinstance(x, np.memmap) for x in seen)


@pytest.mark.parametrize("save, mapped", [(np.savez, True), (np.savez_compressed, False)])
def test_invert_npz_members_mapped_when_stored(tmp_path, inv_ex_calls, save, mapped):
    a = np.asfortranarray(_stack((9, 3, 3)))  # order is kept through the mapping
    src = tmp_path / "m.npz"
    save(src, a=a, b=a[:1])
    seen = inv_ex_calls
    argv = ["invert", str(src), "--key", "a", "-o", str(tmp_path / "o.npy"), "--chunk", "4", "-q"]
    assert cli.main(argv) == 0
    assert len(seen) == 3 and all(isinstance(x, np.memmap) == mapped for x in seen)
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), np.linalg.inv(a), rtol=1e-10)


def test_invert_singular_under_raise(failing, tmp_path, capsys):
    a, src = failing
    dst = tmp_path / "r.npy"
    assert cli.main(["invert", str(src), "-o", str(dst), "--chunk", "16"]) == 1
    captured = capsys.readouterr()
    assert "singular: 1, at batch indices [(4, 1)]" in captured.out
    assert "non-finite: 1, at batch indices [(31, 2)]" in captured.out
    assert "inverted 148 of 150" in captured.out
    assert "2 of 150 matrices could not be inverted" in captured.err
    # The whole file is still written, failed inverses as NaN.
    x, info = np.load(dst), np.load(tmp_path / "r.info.npy")
    assert info[4, 1] == 1 and info[31, 2] == -1 and np.count_nonzero(info) == 2
    assert np.isnan(x[4, 1]).all() and np.isnan(x[31, 2]).all()
    good = info == 0
    np.testing.assert_allclose(x[good], np.linalg.inv(a[good]), rtol=1e-10)


def test_invert_singular_under_nan_and_ignore(failing, tmp_path, capsys):
    _, src = failing
    assert (
        cli.main(["invert", str(src), "-o", str(tmp_path / "n.npy"), "--on-singular", "nan"]) == 0
    )
    assert np.isnan(np.load(tmp_path / "n.npy")[4, 1]).all()
    assert (
        cli.main(["invert", str(src), "-o", str(tmp_path / "i.npy"), "--on-singular", "ignore"])
        == 0
    )
    assert "singular: 1" in capsys.readouterr().out


def test_invert_lists_first_indices_only(tmp_path, capsys):
    a = _stack((30, 2, 2))
    a[::2] = 0.0  # 15 singular
    src = tmp_path / "s.npy"
    np.save(src, a)
    assert (
        cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy"), "--on-singular", "nan"]) == 0
    )
    out = capsys.readouterr().out
    assert "singular: 15, first at batch indices [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, ...]" in out


def test_invert_npz_and_dtypes(tmp_path, capsys):
    a = _stack((6, 3, 3)).astype(np.float16)
    src = tmp_path / "m.npz"
    np.savez_compressed(src, first=a, second=a[:2])
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy")]) == 2
    assert "holds 2 arrays (first, second): pick one with --key" in capsys.readouterr().err
    assert cli.main(["invert", str(src), "--key", "second", "-o", str(tmp_path / "o")]) == 0
    x = np.load(tmp_path / "o.npy")  # ".npy" added as numpy.save does
    assert x.dtype == np.float32 and x.shape == (2, 3, 3)
    np.testing.assert_allclose(x, np.linalg.inv(a[:2].astype(np.float64)), rtol=1e-5)
    assert cli.main(["invert", str(src), "--key", "third", "-o", str(tmp_path / "o.npy")]) == 2
    assert "has no array 'third'" in capsys.readouterr().err


def test_invert_single_matrix(tmp_path, capsys):
    src = tmp_path / "one.npy"
    np.save(src, np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy")]) == 1
    assert "singular: 1, at batch indices [()]" in capsys.readouterr().out
    assert np.load(tmp_path / "o.info.npy").shape == ()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a valid .npy file"),
        (lambda p: p.write_bytes(b"hello, world"), "neither a .npy nor a .npz"),
        (lambda p: p.write_bytes(b"PK\x03\x04broken zip"), "not a valid .npz file"),
        (lambda p: np.save(p, np.ones((4, 2, 3))), "shape (4, 2, 3): expected a stack of square"),
        (lambda p: np.save(p, np.ones(5)), "shape (5,)"),
        (lambda p: np.save(p, np.array([[object()]]), allow_pickle=True), "not a valid .npy file"),
        (lambda p: np.save(p, np.array([["a"]])), "unsupported"),
    ],
)
def test_invert_bad_input_one_line_no_traceback(tmp_path, make, message):
    src = tmp_path / "in.npy"
    make(src)
    proc = run_module("invert", str(src), "-o", str(tmp_path / "o.npy"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuinv invert: error: ")
    assert message in lines[0]
    assert not (tmp_path / "o.npy").exists()


def test_truncated_npy(tmp_path, capsys):
    src = tmp_path / "t.npy"
    np.save(src, _stack((100, 3, 3)))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy")]) == 2
    assert "not a valid .npy file" in capsys.readouterr().err


def test_invert_refuses_to_overwrite_input(tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, _stack((3, 2, 2)))
    assert cli.main(["invert", str(src), "-o", str(src)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(src), _stack((3, 2, 2)))


def test_invert_bad_device_and_chunk(tmp_path, capsys):
    src = tmp_path / "a.npy"
    np.save(src, _stack((3, 2, 2)))
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy"), "--device", "gpu"]) == 2
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy"), "--chunk", "0"]) == 2
    err = capsys.readouterr().err
    assert "device must be" in err and "--chunk must be at least 1" in err


def test_invert_cuda_unavailable_is_one_line(tmp_path, capsys):
    if gpuinv._device.cuda_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    src = tmp_path / "a.npy"
    np.save(src, _stack((3, 2, 2)))
    assert cli.main(["invert", str(src), "-o", str(tmp_path / "o.npy"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA" in err[0]
    assert not (tmp_path / "o.npy").exists() and not list(tmp_path.glob("*.partial"))


def test_invert_subprocess_plain_progress_and_exit_code(failing, tmp_path):
    _, src = failing
    proc = run_module(
        "invert", str(src), "-o", str(tmp_path / "o.npy"), "--chunk", "10", cwd=tmp_path
    )
    assert proc.returncode == 1
    # stderr is a pipe, not a TTY: plain progress lines, no carriage returns.
    assert "\r" not in proc.stderr
    assert "inverted 150 of 150 matrices (100%)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "singular: 1, at batch indices [(4, 1)]" in proc.stdout
    quiet = run_module(
        "invert",
        str(src),
        "-o",
        str(tmp_path / "q.npy"),
        "-q",
        "--on-singular",
        "nan",
        cwd=tmp_path,
    )
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_builtin_bar_draws_on_a_terminal(monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    bar = make_progress(10, quiet=False, stream=stream)
    assert type(bar).__name__ == "_BarProgress"
    bar.update(5)
    bar.update(5)
    bar.close()
    text = stream.getvalue()
    assert "\rinverting [" in text and "100.0%" in text and "10/10 matrices" in text


def test_tqdm_bar_on_a_terminal():
    import io

    pytest.importorskip("tqdm")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = make_progress(4, quiet=False, stream=stream)
    assert type(bar).__name__ == "_TqdmProgress"
    bar.update(4)
    bar.close()
    assert "100%" in stream.getvalue() and "4/4" in stream.getvalue()


# -------------------------------------------------------------------- bench


def test_time_call_calibrates_and_takes_the_median():
    # A fake clock on which every call costs one unit, except a slow 3rd repeat.
    state = {"now": 0.0, "calls": 0}

    def fn():
        state["calls"] += 1
        slow = 13 < state["calls"] <= 18  # calls 14-18: the last repeat
        state["now"] += 10.0 if slow else 1.0

    t = time_call(fn, repeats=3, min_time=4, warmup=2, clock=lambda: state["now"])
    assert isinstance(t, Timing)
    # warmup 2; calibration 1 call (too short) then 5 (>= 4 units); 2 more repeats of 5.
    assert t.number == 5 and state["calls"] == 2 + 1 + 5 + 5 + 5
    assert t.median == 1.0 and t.best == 1.0  # the slow repeat (10 per call) is not the median
    assert state["now"] == 2 + 1 + 5 + 5 + 50
    with pytest.raises(ValueError, match="repeats"):
        time_call(fn, repeats=0)


def test_batch_for():
    assert batch_for(4, np.float64, 1 << 20) == (1 << 20) // 128
    assert batch_for(1024, np.float64, 10) == 1


def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    code = cli.main(
        [
            "bench",
            "--quick",
            "--n",
            "2",
            "5",
            "--peers",
            "numpy",
            "--mib",
            "0.05",
            "--json",
            str(path),
            "-q",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "vs numpy" in out and "numpy" in out
    data = json.loads(path.read_text())
    assert [r["n"] for r in data["rows"]] == [2, 5]
    for row in data["rows"]:
        assert row["seconds"]["gpuinv"] > 0 and row["seconds"]["numpy"] > 0
        assert row["matrices_per_s"]["gpuinv"] == pytest.approx(
            row["batch"] / row["seconds"]["gpuinv"]
        )
        assert row["floor_matrices_per_s"] > 0
    assert data["meta"]["peers"] == ["numpy"] and data["meta"]["floor"] == "host copy"


def test_bench_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    code = cli.main(
        [
            "bench",
            "--quick",
            "--n",
            "2",
            "3",
            "--peers",
            "numpy",
            "--mib",
            "0.05",
            "--plot",
            str(png),
            "-q",
        ]
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--quick", "--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_bench_bad_dtype(capsys):
    assert cli.main(["bench", "--dtype", "int8"]) == 2
    assert "--dtype must be" in capsys.readouterr().err



def test_closed_pipe_is_quiet(monkeypatch, tmp_path, capsys):
    # `gpuinv info | head -1`: writes fail once the reader has gone; the
    # command stops quietly with exit 0 instead of a traceback.
    import io
    import sys

    class ClosedPipe(io.StringIO):
        def __init__(self, fd):
            super().__init__()
            self._fd = fd

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self._fd

    with open(tmp_path / "sink", "w") as sink:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(sink.fileno()))
        assert cli.main(["info"]) == 0
    assert "Traceback" not in capsys.readouterr().err
