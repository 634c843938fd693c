"""Straight-line (fully unrolled) LU inverses and solves for small n on the CPU (Numba, optional).

The loop kernel of :mod:`._compiled` keeps the matrix in a scratch array and
runs loops whose trip count is n. At n <= 8 the loops' control and the
scratch array's loads and stores cost more than the arithmetic: the same
algorithm written out for one n, with every entry a local variable (so in a
register or a stack slot that nothing else aliases), ran 2.3-3.7x faster at
n = 2..6 and 1.6-1.9x at n = 7, 8 (float64 inverse with rcond;
`benchmarks/bench_compiled.py unrolled`, docs/cpu-compiled.md), and the solve
1.6-3.6x.

The arithmetic is the loop kernel's, operation for operation and in the
same order: getf2's pivot (the first entry of largest ``|re| + |im|``),
multipliers ``a_ik * (1 / pivot)``, ``L^-1 P`` built in place, back
substitution by whole rows, ||A||_1 and ||X||_1 summed in the same order,
the same power-of-two scaling. So the two give the same bits, info and
rcond (tests/test_cpu_unrolled.py checks it on hostile input), and the loop
kernel's documentation and tests of its numerics hold for these. Two
differences that change no result: a row interchange is a branch per
candidate row instead of a loop, and after a zero pivot the elimination
runs on (with Inf and NaN, never read) instead of stopping, since every
element of that matrix's output is overwritten with NaN.

Each has a positive definite variant (``invpd{n}``, ``solvepd{n}``): the
loop kernels' ``posdef`` variant written out the same way (the upper
triangle read and mirrored, Cholesky's steps without pivoting, potrf's
info; the same bits as the loop kernel, checked likewise).

The source is generated per n (:func:`source`) and written once to a cache
directory, then imported from there, so that Numba's disk cache
(``cache=True``) keeps the machine code across processes as it does for the
loop kernel; where no directory is writable the module is compiled in
memory, per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import types
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["MAX_N", "source", "kernel", "solve_kernel"]

#: The largest order written out (code size grows as n^3: n = 8 is 1,300
#: lines and compiles in about 5 s, once per machine and dtype).
MAX_N = 8

_VERSION = "3"  # bump when the generator's output changes meaning


def _a(i: int, j: int) -> str:
    return f"a{i}_{j}"


def _load(w: Any, N: int, complex_: bool, posdef: bool) -> None:
    """Every entry into its local; positive definite: the upper triangle, mirrored
    (conjugated), a complex diagonal's imaginary part not read (as potrf)."""
    for i in range(N):
        for j in range(N):
            if not posdef:
                w(f"        {_a(i, j)} = x[b, {i}, {j}]")
            elif i == j:
                w(f"        {_a(i, i)} = x[b, {i}, {i}].real + ZERO")
            elif i < j:
                w(f"        {_a(i, j)} = x[b, {i}, {j}]")
                w(f"        {_a(j, i)} = {_a(i, j)}" + (".conjugate()" if complex_ else ""))


def _posdef_step(w: Any, k: int, first: int, N: int) -> None:
    """Step k without pivoting: potrf's verdict on the pivot (on a Hermitian matrix,
    the square of potrf's: leading minors k over k - 1), then row k (its columns
    from ``first``) scaled by 1 / sqrt(pivot) into ``inv``, as the loop kernels.
    Past a failed step the arithmetic runs on (NaN, Inf: never read)."""
    w(f"        if not ({_a(k, k)}.real > RZ) and code == 0:")
    w(f"            code = {k + 1}")
    w(f"        inv = ONE * (RONE / np.sqrt({_a(k, k)}.real))")
    for j in range(first, N):
        w(f"        {_a(k, j)} = {_a(k, j)} * inv")


def _key(v: str, complex_: bool) -> str:
    """getf2's pivot key: ``|re| + |im|`` (``|a|`` for real)."""
    return f"abs({v}.real) + abs({v}.imag)" if complex_ else f"abs({v})"


def _largest_and_scale(w: Any, N: int, complex_: bool, between: Any = None) -> None:
    """The largest |re|, |im| into ``big``, then (after ``between()``, if given)
    the power-of-two scaling of every entry into ``s``, as the loop kernels."""
    entries = [(i, j) for i in range(N) for j in range(N)]
    w("        big = RZ")
    for i, j in entries:
        w(f"        big = max(big, abs({_a(i, j)}.real))")
        if complex_:
            w(f"        big = max(big, abs({_a(i, j)}.imag))")
    if between is not None:
        between()
    w("        s = RONE")
    w("        if big > RZ and (big < LO or big > HI):")
    w("            s = _power_of_two(big, LIMIT, RONE)")
    for i, j in entries:
        w(f"            {_a(i, j)} = {_a(i, j)} * s")


def _pivot(w: Any, k: int, N: int, complex_: bool, p: str) -> None:
    """getf2's pivot row of step k into ``p``, and the zero-pivot code."""
    w(f"        {p} = {k}")
    w(f"        best = {_key(_a(k, k), complex_)}")
    for i in range(k + 1, N):
        w(f"        kv = {_key(_a(i, k), complex_)}")
        w("        if kv > best:")
        w("            best = kv")
        w(f"            {p} = {i}")
    w(f"        if best == RZ and code == 0:")
    w(f"            code = {k + 1}")


def _reciprocal(w: Any, k: int, complex_: bool) -> None:
    """``inv``, 1 / the pivot of step k."""
    if complex_:
        # Numba raises on a complex division by zero (error_model or
        # not): past a zero pivot, whose output is all NaN, divide by 1.
        w(f"        inv = ONE / ({_a(k, k)} if code == 0 else ONE)")
    else:
        w(f"        inv = ONE / {_a(k, k)}")


def _function(n: int, complex_: bool, posdef: bool = False) -> list[str]:
    """The source lines of ``inv{n}{r|c}`` (``invpd{n}{r|c}`` with ``posdef``:
    Hermitian positive definite, the loop kernel's ``posdef`` variant)."""
    lines: list[str] = []
    w = lines.append
    N = n
    suffix = "c" if complex_ else "r"

    def modulus(v: str) -> str:
        # The loop kernel's branch-free complex modulus (checked by the norm's range).
        return f"np.sqrt({v}.real * {v}.real + {v}.imag * {v}.imag)" if complex_ else f"abs({v})"

    def one_norm(name: str) -> None:
        # ||.||_1 of the matrix in the locals into `name`, inside `if RC:`:
        # the column sums in the loop kernel's order; for complex, outside the
        # range where no square can over- or underflow enough to matter,
        # summed again with the careful modulus, as the loop kernel.
        for j in range(N):
            w(f"            cs = " + " + ".join(modulus(_a(i, j)) for i in range(N)))
            w(f"            {name} = max({name}, cs)")
        if complex_:
            w(f"            if not ({name} >= SAFE_LO and {name} <= SAFE_HI):")
            w(f"                {name} = RZ")
            for j in range(N):
                w(f"                cs = " + " + ".join(f"_modulus({_a(i, j)}, LO, HI)" for i in range(N)))
                w(f"                {name} = max({name}, cs)")

    all_entries = [(i, j) for i in range(N) for j in range(N)]
    w(f"@_jit(nogil=True, error_model='numpy', boundscheck=False)")
    w(f"def inv{'pd' if posdef else ''}{N}{suffix}(x, out, info, rc, lo, hi, RC, ONE, ZERO, NAN, RZ, RONE, RNAN, "
      "LO, HI, LIMIT, SAFE_LO, SAFE_HI):")
    w(f"    for b in range(lo, hi):")
    _load(w, N, complex_, posdef)
    # Every entry finite: a - a is 0 for a finite a, NaN otherwise.
    w("        z = " + " + ".join(f"({_a(i, j)} - {_a(i, j)})" for i, j in all_entries))
    w("        if not (z == ZERO):")
    w("            info[b] = -1")
    for i, j in all_entries:
        w(f"            out[b, {i}, {j}] = NAN")
    w("            if RC:")
    w("                rc[b] = RNAN")
    w("            continue")
    def norm_a() -> None:
        w("        norm_a = RZ")
        w("        if RC:")
        one_norm("norm_a")

    # The largest |re|, |im|: whether to scale (||A||_1 before scaling).
    _largest_and_scale(w, N, complex_, norm_a)
    for c in range(N):
        w(f"        c{c} = {c}")
    w("        code = 0")
    for k in range(N):
        if posdef:
            _posdef_step(w, k, 0, N)
        else:
            _pivot(w, k, N, complex_, "p")
            for i in range(k + 1, N):
                w(f"        {'if' if i == k + 1 else 'elif'} p == {i}:")
                for j in range(N):
                    w(f"            {_a(k, j)}, {_a(i, j)} = {_a(i, j)}, {_a(k, j)}")
                w(f"            c{k}, c{i} = c{i}, c{k}")
            _reciprocal(w, k, complex_)
        for i in range(k + 1, N):
            w(f"        l = {_a(i, k)} * inv")
            for j in range(N):
                if j != k:
                    w(f"        {_a(i, j)} = {_a(i, j)} - l * {_a(k, j)}")
            w(f"        {_a(i, k)} = ZERO - {'l * inv' if posdef else 'l'}")
        w(f"        {_a(k, k)} = inv")
    w("        info[b] = code")
    w("        if code != 0:")
    for i, j in all_entries:
        w(f"            out[b, {i}, {j}] = NAN")
    w("            if RC:")
    w("                rc[b] = RZ")
    w("            continue")
    # X = U^-1 (L^-1 P), bottom row first, each row as the loop kernel's
    # whole-row update: (e_k part - sum_{j>k} u_kj x_j, increasing j) / u_kk.
    for k in range(N - 1, -1, -1):
        for j in range(k + 1, N):
            w(f"        u{j} = {_a(k, j)}")
        w(f"        ik = {_a(k, k)}")
        for c in range(N):
            diagonal = "ik" if posdef else "ONE"  # of R^-H, or of L^-1 P
            expr = diagonal if c == k else ("ZERO" if c > k else _a(k, c))
            for j in range(k + 1, N):
                expr = f"({expr} - u{j} * {_a(j, c)})"
            w(f"        {_a(k, c)} = {expr} * ik")
    if posdef:  # the lower triangle, mirrored: exactly Hermitian
        for i in range(N):
            w(f"        {_a(i, i)} = {_a(i, i)}.real + ZERO")
            for c in range(i + 1, N):
                w(f"        {_a(i, c)} = {_a(c, i)}" + (".conjugate()" if complex_ else ""))
    for i, c in all_entries:
        w(f"        out[b, {i}, c{c}] = {_a(i, c)} * s")
    w("        if RC:")
    w("            norm_x = RZ")
    one_norm("norm_x")
    w("            rc[b] = norm_a * (norm_x * s)")
    w("    if RC:")
    w("        for b in range(lo, hi):")
    w("            if info[b] == 0:")
    w("                r = RONE / rc[b]")
    w("                rc[b] = r if r - r == RZ else RZ")
    w("")
    return lines


def _solve_function(n: int, complex_: bool, posdef: bool = False) -> list[str]:
    """The source lines of ``solve{n}{r|c}``: the loop solve kernel's arithmetic
    (``solvepd{n}{r|c}`` with ``posdef``: its ``posdef`` variant, no pivoting).

    The loop kernel eliminates on [A | B]. Here A is factored in local
    variables once, keeping each step's pivot row and multipliers, and the
    steps are then replayed on each right-hand side column in the same order
    (swap at step k, then b_i - l_ik b_k for the rows below, in order), and
    back substituted as the loop kernel does (t = b_k - sum_{j>k} u_kj x_j,
    increasing j, times 1 / u_kk): every b entry sees the same operations in
    the same order, so the same bits.
    """
    lines: list[str] = []
    w = lines.append
    N = n
    suffix = "c" if complex_ else "r"

    all_entries = [(i, j) for i in range(N) for j in range(N)]
    w(f"@_jit(nogil=True, error_model='numpy', boundscheck=False)")
    w(f"def solve{'pd' if posdef else ''}{N}{suffix}(x, rhs, y, info, ONE, ZERO, NAN, RZ, RONE, LO, HI, LIMIT):")
    w("    K = rhs.shape[2]")
    w("    for b in range(x.shape[0]):")
    _load(w, N, complex_, posdef)
    w("        z = " + " + ".join(f"({_a(i, j)} - {_a(i, j)})" for i, j in all_entries))
    w("        if not (z == ZERO):")
    w("            info[b] = -1")
    w(f"            for i in range({N}):")
    w("                for c in range(K):")
    w("                    y[b, i, c] = NAN")
    w("            continue")
    _largest_and_scale(w, N, complex_)
    w("        code = 0")
    for k in range(N):
        if posdef:
            _posdef_step(w, k, k, N)
            w(f"        r{k} = inv")
        else:
            _pivot(w, k, N, complex_, f"p{k}")
            # The loop kernel swaps columns k.. only; columns < k are never read again.
            for i in range(k + 1, N):
                w(f"        {'if' if i == k + 1 else 'elif'} p{k} == {i}:")
                for j in range(k, N):
                    w(f"            {_a(k, j)}, {_a(i, j)} = {_a(i, j)}, {_a(k, j)}")
            _reciprocal(w, k, complex_)
        for i in range(k + 1, N):
            w(f"        l{k}_{i} = {_a(i, k)} * inv")
            for j in range(k + 1, N):
                w(f"        {_a(i, j)} = {_a(i, j)} - l{k}_{i} * {_a(k, j)}")
        w(f"        {_a(k, k)} = inv")
    w("        info[b] = code")
    w("        if code != 0:")
    w(f"            for i in range({N}):")
    w("                for c in range(K):")
    w("                    y[b, i, c] = NAN")
    w("            continue")
    w("        for c in range(K):")
    for i in range(N):
        w(f"            b{i} = rhs[b, {i}, c] * s")
    for k in range(N):
        if posdef:
            w(f"            b{k} = b{k} * r{k}")
        for i in range(k + 1 if not posdef else N, N):
            w(f"            {'if' if i == k + 1 else 'elif'} p{k} == {i}:")
            w(f"                b{k}, b{i} = b{i}, b{k}")
        for i in range(k + 1, N):
            w(f"            b{i} = b{i} - l{k}_{i} * b{k}")
    for k in range(N - 1, -1, -1):
        expr = f"b{k}"
        for j in range(k + 1, N):
            expr = f"({expr} - {_a(k, j)} * b{j})"
        w(f"            b{k} = {expr} * {_a(k, k)}")
        w(f"            y[b, {k}, c] = b{k}")
    w("")
    return lines


_HEADER = '''"""Generated by gpuinv.engines._unrolled.source(); do not edit."""
import math
import numba
import numpy as np


def _jit(**options):
    # Numba refuses cache=True (RuntimeError, when the decorator is applied)
    # where it cannot write its cache: compile per process there.
    def decorate(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:
            return numba.njit(cache=False, **options)(fn)
    return decorate


@_jit(inline="always")
def _modulus(v, lo, hi):
    re = abs(v.real)
    im = abs(v.imag)
    big = max(re, im)
    if big > lo and big < hi:
        return np.sqrt(re * re + im * im)
    return abs(v)


@_jit(inline="always")
def _power_of_two(big, limit, one):
    """2**-e for big = f 2**e (0.5 <= f < 1), e clipped to +-limit, exactly, in big's type."""
    e = min(max(math.frexp(big)[1], -limit), limit)
    base = one / (one + one) if e > 0 else one + one
    k = abs(e)
    s = one
    while k:
        if k & 1:
            s = s * base
        k >>= 1
        if k:
            base = base * base
    return s


'''


def source() -> str:
    """The generated module: ``inv{n}r``, ``inv{n}c``, ``solve{n}r``, ``solve{n}c`` for n = 2..MAX_N."""
    body = [_HEADER]
    for n in range(2, MAX_N + 1):
        for complex_ in (False, True):
            for posdef in (False, True):
                body.append("\n".join(_function(n, complex_, posdef)) + "\n\n")
                body.append("\n".join(_solve_function(n, complex_, posdef)) + "\n\n")
    return "".join(body)


def _cache_dirs() -> list[str]:
    env = os.environ.get("GPUINV_CACHE_DIR")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [d for d in (env, os.path.join(base, "gpuinv"), os.path.join(tempfile.gettempdir(), f"gpuinv-{uid}")) if d]


@lru_cache(maxsize=None)
def _module() -> Any:
    text = source()
    digest = hashlib.sha1((_VERSION + text).encode()).hexdigest()[:16]
    name = f"gpuinv_unrolled_{digest}"
    for directory in _cache_dirs():
        path = os.path.join(directory, name + ".py")
        try:
            os.makedirs(directory, exist_ok=True)
            if not os.path.exists(path):
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, path)  # atomic: a concurrent process sees all or nothing
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        except (OSError, RuntimeError):
            sys.modules.pop(name, None)
            continue
    # Nowhere to write: compiled in memory (Numba cannot cache it), per process.
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(text.replace("cache=True,", "cache=False,"), f"<{name}>", "exec"), namespace)
    return types.SimpleNamespace(**namespace)


@lru_cache(maxsize=None)
def _constants(dtype: np.dtype) -> tuple[Any, ...]:
    t = dtype.type
    rt = np.dtype(t(0).real.dtype).type
    maxexp = np.finfo(rt).maxexp
    return (t(1), t(0), t(np.nan), rt(0), rt(1), rt(np.nan),
            rt(np.ldexp(1.0, -(maxexp // 2))), rt(np.ldexp(1.0, maxexp // 2)), maxexp - 4,
            rt(np.ldexp(1.0, -(maxexp // 4))), rt(np.ldexp(1.0, maxexp // 2 - 1)))


def solve_kernel(n: int, dtype: Any, posdef: bool = False) -> Any:
    """``run(a, b, y, info)``: the unrolled solve for order n (2 <= n <= MAX_N), b (m, n, k);
    ``posdef``: Hermitian positive definite, the upper triangle read, potrf's info."""
    if not 2 <= n <= MAX_N:
        raise ValueError(f"no unrolled kernel for n = {n}; they cover 2..{MAX_N}")
    dtype = np.dtype(dtype)
    fn = getattr(_module(), f"solve{'pd' if posdef else ''}{n}{'c' if dtype.kind == 'c' else 'r'}")
    one, zero, nan, rz, rone, _, lo, hi, limit = _constants(dtype)[:9]

    def run(a: np.ndarray, b: np.ndarray, y: np.ndarray, info: np.ndarray) -> None:
        fn(a, b, y, info, one, zero, nan, rz, rone, lo, hi, limit)

    return run


def kernel(n: int, dtype: Any, posdef: bool = False) -> Any:
    """``run(x, out, info, rc_or_None, lo, hi)``: the unrolled inverse for order n (2 <= n <= MAX_N);
    ``posdef``: Hermitian positive definite, the upper triangle read, potrf's info."""
    if not 2 <= n <= MAX_N:
        raise ValueError(f"no unrolled kernel for n = {n}; they cover 2..{MAX_N}")
    dtype = np.dtype(dtype)
    fn = getattr(_module(), f"inv{'pd' if posdef else ''}{n}{'c' if dtype.kind == 'c' else 'r'}")
    consts = _constants(dtype)
    empty = np.empty(1, dtype=consts[3].dtype)

    def run(x: np.ndarray, out: np.ndarray, info: np.ndarray, rc: np.ndarray | None,
            lo: int, hi: int) -> None:
        if rc is None:
            fn(x, out, info, empty, lo, hi, False, *consts)
        else:
            fn(x, out, info, rc, lo, hi, True, *consts)

    return run
