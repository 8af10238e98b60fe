"""The import graph of the `edge` package has no cycle: each module's imports, wherever they stand in it (lazy
ones inside functions included), read from its source with `ast`."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (the folders as pyproject's `package-dir` maps them)."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in dirs.items():
        for path in (ROOT / folder).glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that `path` (module `name`) imports: `from a import b` counts as `a.b` when that is a
    module, else `a`."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` (its modules in order, the first repeated at the end), or [] if there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            if cycle := visit(nxt):
                return cycle
        path.pop()
        done.add(node)
        return []

    for node in sorted(graph):
        if cycle := visit(node):
            return cycle
    return []


def test_graph_is_read():
    graph = import_graph()
    assert "edge.runtime.loop" in graph["edge.api"] and "edge.export.graph" in graph["edge.export.build"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) == []


def test_runtime_never_imports_export():
    """The runtime is the light core: the torch backend is registered by export, not fetched by the runtime."""
    graph = import_graph()
    up = {m: sorted(i for i in deps if i.startswith(("edge.export", "edge.quantize", "edge.devices", "edge.api")))
          for m, deps in graph.items() if m.startswith("edge.runtime")}
    assert not any(up.values()), up
