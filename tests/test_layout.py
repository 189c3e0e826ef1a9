"""The measures the code is kept to (docs/architecture.md): no import cycle, no module over ~500 lines,
no class over ~300, and every module of the package documented in one sentence at least."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gql"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("gql", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The gql modules a module imports, at any depth (a function-level import is a dependency too)."""
    imported = set()
    for node in ast.walk(tree):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        imported |= {name for name in names if name in known}
    return imported


def test_no_module_of_the_package_imports_itself_back():
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    cycles = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        for dependency in sorted(graph[name]):
            if dependency in path:
                cycles.append(path[path.index(dependency):] + [dependency])
            elif dependency not in done:
                done.add(dependency)
                visit(dependency, [*path, dependency], done)

    for name in graph:
        visit(name, [name], {name})
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_modules_and_classes_stay_livable():
    too_long = []
    for name, tree in _modules().items():
        lines = max((getattr(node, "end_lineno", 0) or 0 for node in ast.walk(tree)), default=0)
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"class {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_every_module_says_what_it_is_for():
    undocumented = [name for name, tree in _modules().items() if not ast.get_docstring(tree) and name != "gql.__main__"]
    assert not undocumented, undocumented
