"""No import cycle among gpuinv's modules (issue 18).

The graph is read from the source with ``ast``, not from a running import:
every ``import`` and ``from ... import`` counts, at module level and inside
functions alike (a lazy import is still a dependency; it only hides a cycle
until the call that closes it). An edge goes to the module imported: for
``from pkg import name`` to ``pkg.name`` where that is a module, else to
``pkg`` (a name the package defines). The implicit import of a parent
package by its submodules is not an edge: every module would otherwise
depend on ``gpuinv/__init__.py``, which re-exports the public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpuinv"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """gpuinv's modules and, for each, the gpuinv modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, name, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            for target in targets:
                if target.partition(".")[0] != "gpuinv":
                    continue
                while target not in modules:  # gpuinv.x.attr -> gpuinv.x
                    target = target.rpartition(".")[0]
                if target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # Lazy, inside a function (the call path hands dask input to its adapter).
    assert "gpuinv._dask" in graph["gpuinv._path"]
    # Relative, two levels up, from a subpackage.
    assert "gpuinv._request" in graph["gpuinv.engines.cuda.engine"]
    # "from . import a, b": each submodule.
    assert {"gpuinv.engines.cuda.arrays", "gpuinv.engines.cuda.planning"} <= graph[
        "gpuinv.engines.cuda.cublas"]
    # "from pkg import name" where name is not a module: the package.
    assert "gpuinv" in graph["gpuinv.cli.invert"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_module_imports_the_public_layer_back():
    # The public functions build a request and call the path; nothing below
    # them calls them back (issue 18: dask called inv_ex back).
    public = {"gpuinv", "gpuinv._api", "gpuinv._solve"}
    users = ("gpuinv.__main__", "gpuinv.cli")  # the CLI package calls the public API
    graph = import_graph()
    for name, targets in graph.items():
        if name in public or name.startswith(users):
            continue
        assert not targets & public, f"{name} imports {sorted(targets & public)}"
