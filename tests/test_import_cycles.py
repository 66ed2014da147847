"""No import cycle in keras_branch (zoo and export included, as installed).

Every `import` counts, at module level or inside a function: an import moved
into a function to dodge a cycle still ties the two modules together.
"""

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest


def module_files(*packages: str) -> dict[str, Path]:
    """`{dotted module name: source file}` for packages and all their subpackages, as installed.

    Each package is looked up by name, so a package installed inside another
    one's namespace from elsewhere (`keras_branch.zoo` from zoo/ in an
    editable install) is found where the import system finds it.
    """
    files = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        files[package] = Path(spec.origin)
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=package + "."):
            sub = importlib.util.find_spec(info.name)
            if sub is not None and sub.origin and sub.origin.endswith(".py"):
                files[info.name] = Path(sub.origin)
    return files


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Which of `files`' modules each module imports (any nesting level)."""

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                # A module importing its own package runs the package's
                # __init__ first, which is not a cycle of the module's making.
                if found and found != module and not module.startswith(found + "."):
                    deps.add(found)
        graph[module] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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


def test_keras_branch_has_no_import_cycle():
    files = module_files("keras_branch", "keras_branch.zoo", "keras_branch.export")
    # zoo/ and export/ install inside the namespace: they must be walked too.
    assert {"keras_branch.zoo.api", "keras_branch.export.api", "keras_branch.cli"} <= set(files)
    assert len(files) > 40
    found = cycles(import_graph(files))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("inside_function", [False, True])
def test_the_walk_finds_a_cycle(tmp_path, monkeypatch, inside_function):
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg import b\n")
    body = "def f():\n    from cyclepkg.a import x\n" if inside_function else "import cyclepkg.a\n"
    (package / "b.py").write_text(body)
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = import_graph(module_files("cyclepkg"))
    assert graph["cyclepkg.c"] == {"cyclepkg.a"}
    assert cycles(graph) == [["cyclepkg.a", "cyclepkg.b"]]
