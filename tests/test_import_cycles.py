"""No import cycles between edgeproxy's modules (issue 16): a new one fails this test, which names every cycle
and the lines that make it.

Every module under edgeproxy/ is parsed (not imported) and each import it makes at run time is collected: at
module level and inside functions alike (a late import hides a cycle from the interpreter, not from a reader),
but not under `if TYPE_CHECKING:`, which never runs. `from edgeproxy.x import y` is an import of module
`edgeproxy.x.y` when y is a submodule, else of `edgeproxy.x`; a package's `__init__` is the package itself.
A cycle is a strongly connected component of more than one module, or a module importing itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    file: str  # relative to the repository
    line: int


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `package_dir` (a package is named by its __init__.py)."""
    names = {}
    base = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that can run: everywhere but the body of an `if TYPE_CHECKING:` (its else runs)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The edgeproxy modules `name` (the module in `path`) imports at run time."""
    top = next(iter(modules)).split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    file = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    edges = []
    for node in _run_time_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:  # relative: from the importer's package, one level up per extra dot
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in dict.fromkeys(targets):  # `from x import a, b`: one import of x, not two
            if target.split(".")[0] != top:
                continue
            while target not in modules and "." in target:  # `import edgeproxy.x.missing`: the nearest module
                target = target.rpartition(".")[0]
            if target in modules:
                edges.append(Edge(name, target, file, node.lineno))
    return edges


def import_graph(package_dir: Path) -> dict[str, list[Edge]]:
    modules = module_names(package_dir)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a deep import chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[Edge]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for edge in edges:
                nxt = edge.imported
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


@dataclass(frozen=True, slots=True)
class Cycle:
    loop: list[Edge]  # one shortest way round: a -> b -> ... -> a
    edges: list[Edge]  # every import between the cycle's modules (all of them must go for the cycle to go)

    def __str__(self) -> str:
        way = " -> ".join([self.loop[0].importer, *(edge.imported for edge in self.loop)])
        lines = [f"    {e.importer} imports {e.imported}  ({e.file}:{e.line})" for e in self.edges]
        return "\n".join([way, *lines])


def cycles(graph: dict[str, list[Edge]]) -> list[Cycle]:
    """Every component of several modules (with a shortest loop through its first module), every self-import."""
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        inside = [edge for name in component for edge in graph[name] if edge.imported in members]
        if len(component) == 1:
            found += [Cycle([edge], [edge]) for edge in inside]
            continue
        start = component[0]
        paths: dict[str, list[Edge]] = {start: []}
        frontier = [start]
        loop: list[Edge] | None = None
        while loop is None:  # breadth first: the shortest way back to `start` (there is one: a component)
            following = []
            for edge in (edge for node in frontier for edge in graph[node] if edge.imported in members):
                if edge.imported == start:
                    loop = [*paths[edge.importer], edge]
                    break
                if edge.imported not in paths:
                    paths[edge.imported] = [*paths[edge.importer], edge]
                    following.append(edge.imported)
            frontier = following
        found.append(Cycle(loop, inside))
    return found


def test_edgeproxy_has_no_import_cycles() -> None:
    found = cycles(import_graph(ROOT / "edgeproxy"))
    if found:
        pytest.fail(
            f"{len(found)} import cycle(s) in edgeproxy/; break each by moving what both sides need into a module "
            "both import, or by passing it in:\n" + "\n".join(map(str, found)), pytrace=False
        )


# -- the checker itself, on a made-up package ------------------------------------------------------------------


def write_package(tmp: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp / "pkg"


def test_checker_finds_late_relative_and_self_imports_but_not_type_checking_ones(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from .. import a\n",  # a late, relative import back: a <-> b
        "pkg/c.py": "import pkg.c\n",  # a self-import
        "pkg/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import e\nelse:\n    import os\n",
        "pkg/e.py": "from pkg.d import x\n",  # d only imports e for type checking: no cycle
        "pkg/f.py": "from pkg import g\n",
        "pkg/g.py": "from . import f\n",
    })  # fmt: skip
    graph = import_graph(package)
    assert [e.imported for e in graph["pkg.sub.b"]] == ["pkg.a"]
    assert graph["pkg.d"] == []
    found = sorted(sorted({e.importer for e in cycle.edges}) for cycle in cycles(graph))
    assert found == [["pkg.a", "pkg.sub.b"], ["pkg.c"], ["pkg.f", "pkg.g"]]
    report = "\n".join(map(str, cycles(graph)))
    assert "pkg.a -> pkg.sub.b -> pkg.a" in report and "pkg/sub/b.py:2" in report
