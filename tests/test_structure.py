"""The floor plan holds: every module imports alone, no import cycle, the core stays pure.

These read the code itself (its import statements, in a fresh interpreter where it matters), so a
new module or a new import that breaks the layout fails here, whoever writes it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actors", "server")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """Every module an import statement in ``path`` names, function-local ones included."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            for alias in node.names:  # ``from pkg import submodule``
                yield f"{module}.{alias.name}"


def _graph() -> dict[str, set[str]]:
    """Import edges between our own modules; importing ``a.b.c`` also runs ``a`` and ``a.b``."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for target in _imports(name, path):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in MODULES and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_core_never_imports_the_edge() -> None:
    graph = _graph()
    for name in MODULES:
        if name.startswith("actors"):
            edge = sorted(m for m in _reachable(graph, name) if m.startswith("server"))
            assert edge == [], f"{name} reaches the HTTP edge through {edge}"


@pytest.mark.parametrize("layer", ["actors.core", "actors.session"])
def test_no_aiohttp_below_the_edge(layer: str) -> None:
    graph = _graph()
    for name, path in MODULES.items():
        if name == layer or name.startswith(layer + "."):
            for module in {name, *_reachable(graph, name)}:
                third = {t.split(".")[0] for t in _imports(module, MODULES[module])}
                assert "aiohttp" not in third, f"{name} imports aiohttp through {module} ({path})"


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = [n for n in MODULES if n != "server.__main__"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: (n, _fresh(f"import {n}")), names))
    failed = {n: r.stderr.strip().splitlines()[-1] for n, r in results if r.returncode != 0}
    assert failed == {}


def test_importing_the_core_loads_no_asyncio_and_no_io_library() -> None:
    core = [n for n in MODULES if n == "actors.core" or n.startswith("actors.core.")]
    heavy = ["asyncio", "aiohttp", "aiosqlite", "asyncpg", "redis", "sqlite3", "socket", "server"]
    probe = f"import sys\nfor n in {core!r}: __import__(n)\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = _fresh(probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _is_type_var(value: ast.expr | None) -> bool:
    """``R = TypeVar("R")``: a typing device of its module, not part of its surface."""
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "TypeVar"


def test_every_public_name_is_in_all() -> None:
    missing: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        declared: set[str] | None = None
        defined: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id == "__all__" and node.value is not None:
                        declared = set(ast.literal_eval(node.value))
                    elif isinstance(t, ast.Name) and not _is_type_var(node.value):
                        defined.add(t.id)
            elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
        public = {d for d in defined if not d.startswith("_") and d != "log"}
        if public and declared is None:
            missing[name] = ["(no __all__)"]
        elif declared is not None and public - declared:
            missing[name] = sorted(public - declared)
    assert missing == {}
