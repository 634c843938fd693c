"""``gpuinv invert --rcond/--assume-a`` and ``gpuinv solve`` (issue 10), in process."""

from __future__ import annotations

import numpy as np
import pytest

import gpuinv
from gpuinv import cli


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 3, 3)) + 3 * np.eye(3)
    a[2] = np.diag([1.0, 1e-20, 1.0])  # ill-conditioned, invertible
    a[4] = 0  # singular
    np.save(tmp_path / "a.npy", a)
    return a, tmp_path


def test_invert_rcond_writes_beside_the_inverse(stack, capsys):
    a, d = stack
    code = cli.main(["invert", str(d / "a.npy"), "-o", str(d / "x.npy"), "--rcond", "--chunk", "3",
                     "--on-singular", "nan"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ill-conditioned (rcond < eps = 2.22e-16): 1, at batch indices [2]" in out
    assert "x.rcond.npy" in out
    rc = np.load(d / "x.rcond.npy")
    want = gpuinv.inv_ex(a, rcond=True, device="cpu")
    np.testing.assert_array_equal(rc, want.rcond)
    np.testing.assert_array_equal(np.load(d / "x.info.npy"), want.info)
    assert not list(d.glob("*.partial"))


def test_invert_without_rcond_writes_no_rcond_file(stack, capsys):
    _, d = stack
    assert cli.main(["invert", str(d / "a.npy"), "-o", str(d / "x.npy"), "-q",
                     "--on-singular", "ignore"]) == 0
    assert not (d / "x.rcond.npy").exists()


def test_invert_assume_a(tmp_path, capsys):
    rng = np.random.default_rng(4)
    g = rng.standard_normal((5, 4, 4))
    a = g @ g.transpose(0, 2, 1) + 4 * np.eye(4)
    a[3, 0, 0] = -1.0
    np.save(tmp_path / "a.npy", a)
    code = cli.main(["invert", str(tmp_path / "a.npy"), "-o", str(tmp_path / "x.npy"),
                     "--assume-a", "positive definite", "--lower"])
    assert code == 1
    out = capsys.readouterr().out
    assert "not positive definite: 1, at batch indices [3]" in out
    want = gpuinv.inv_ex(a, assume_a="pos", lower=True, device="cpu")
    np.testing.assert_array_equal(np.load(tmp_path / "x.info.npy"), want.info)
    assert cli.main(["invert", str(tmp_path / "a.npy"), "-o", str(tmp_path / "y.npy"),
                     "--assume-a", "tridiagonal"]) == 2
    assert "not a recognized matrix structure" in capsys.readouterr().err


@pytest.mark.parametrize("b_shape,out_shape", [((3,), (7, 3)), ((7, 3, 2), (7, 3, 2)),
                                               ((1, 3, 1), (7, 3, 1))])
def test_solve(stack, capsys, b_shape, out_shape):
    a, d = stack
    b = np.random.default_rng(5).standard_normal(b_shape)
    np.save(d / "b.npy", b)
    code = cli.main(["solve", str(d / "a.npy"), str(d / "b.npy"), "-o", str(d / "s"), "--rcond",
                     "--chunk", "2"])
    assert code == 1  # matrix 4 is singular
    captured = capsys.readouterr()
    assert "singular: 1, at batch indices [4]" in captured.out
    assert "1 of 7 systems could not be solved" in captured.err
    x = np.load(d / "s.npy")
    assert x.shape == out_shape
    want = gpuinv.solve_ex(a, b, rcond=True, device="cpu")
    ok = want.info == 0
    np.testing.assert_allclose(x[ok], want.solution[ok], rtol=1e-12)
    assert np.isnan(x[~ok]).all()
    np.testing.assert_array_equal(np.load(d / "s.info.npy"), want.info)
    np.testing.assert_array_equal(np.load(d / "s.rcond.npy"), want.rcond)


def test_solve_errors(stack, capsys):
    _, d = stack
    np.save(d / "bad.npy", np.ones((7, 4, 1)))
    assert cli.main(["solve", str(d / "a.npy"), str(d / "bad.npy"), "-o", str(d / "s")]) == 2
    assert "has 4 rows" in capsys.readouterr().err
    np.save(d / "bad.npy", np.ones((5, 3, 1)))
    assert cli.main(["solve", str(d / "a.npy"), str(d / "bad.npy"), "-o", str(d / "s")]) == 2
    assert "do not broadcast" in capsys.readouterr().err
    np.save(d / "b.npy", np.ones(3))
    assert cli.main(["solve", str(d / "a.npy"), str(d / "b.npy"), "-o", str(d / "a.npy")]) == 2
    assert "would overwrite" in capsys.readouterr().err
