"""No import cycles in ``clip_rt`` and ``clip_rt_export``; the tools kept apart.

The graph is built from the source with ``ast``, without importing anything: every ``import`` of a
project module counts, at module level and inside functions alike (a lazy import hides a cycle
from Python, not from a reader). Imports under ``if TYPE_CHECKING:`` are left out: they never run.
A cycle is reported as the chain of modules that closes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package name -> its source folder (pyproject's [tool.setuptools.package-dir])
PACKAGES = {"clip_rt": REPO / "clip_rt", "clip_rt_export": REPO / "export"}

# Cycles tolerated for now, each as the sorted tuple of its modules. The engine's session rework
# removes this one (backends.choose runs the parity evidence through runtime_info); once it is
# merged, this set is empty and stays so.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in *tree*, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module *name* stands for: itself, or the closest package above it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's ``__init__`` counts as the package)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import mod` depends on the module pkg.mod where there is one, else on pkg
                targets = [f"{stem}.{alias.name}" for alias in node.names]
                targets = [t for t in targets if t in modules] or [stem]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _chain(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, as a -> b -> ... -> a (breadth first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # a component of 2+ always has one


def cycles() -> list[list[str]]:
    graph = import_graph(module_files())
    return [_chain(graph, component) for component in _strongly_connected(graph)]


def test_no_import_cycles() -> None:
    found = cycles()
    unexpected = [c for c in found if tuple(sorted(set(c))) not in KNOWN_CYCLES]
    assert not unexpected, "import cycles:\n" + "\n".join(" -> ".join(c) for c in unexpected)


def test_known_cycles_still_exist() -> None:
    """An allowed cycle that is gone must leave the allow-list, so that it cannot come back."""
    found = {tuple(sorted(set(c))) for c in cycles()}
    assert not KNOWN_CYCLES - found, f"fixed, remove from KNOWN_CYCLES: {sorted(KNOWN_CYCLES - found)}"


# -- tools apart: bench/ and scripts/ use installed packages, not each other's folders ----------
def _tool_files() -> list[Path]:
    return sorted((REPO / "bench").glob("*.py")) + sorted((REPO / "scripts" / "arm64check").glob("*.py"))


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_tools_do_not_extend_sys_path() -> None:
    """sys.path.insert/append in bench/ or arm64check/ means a tool imports another folder."""
    found = []
    for path in _tool_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"insert", "append", "extend"}
                and ast.unparse(node.func.value) == "sys.path"
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found


def test_tools_import_neither_tests_nor_each_other() -> None:
    test_modules = {p.stem for p in (REPO / "tests").glob("*.py")}
    for path in _tool_files():
        tops = {name.split(".")[0] for name in _imported_names(path)}
        assert not tops & (test_modules | {"tests", "conftest"}), f"{path.relative_to(REPO)} imports tests/"
        if path.parent.name == "arm64check":
            assert "bench" not in tops, f"{path.relative_to(REPO)} imports bench"
        else:
            assert "arm64check" not in tops, f"{path.relative_to(REPO)} imports scripts/arm64check"


# -- the checker itself -------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    out = {}
    for name, text in files.items():
        path = root / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out[name.removesuffix(".__init__")] = path
    return out


def test_checker_finds_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    modules = _write(
        tmp_path,
        {
            "pkg.__init__": "",
            "pkg.a": "from .b import f\n",
            "pkg.b": "def f():\n    from pkg import c\n",
            "pkg.c": "from . import a\n",
            "pkg.d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n",
        },
    )
    graph = import_graph(modules)
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()  # a type-only import is no cycle
    (component,) = _strongly_connected(graph)
    assert component == ["pkg.a", "pkg.b", "pkg.c"]
    assert _chain(graph, component) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


@pytest.mark.parametrize("source", ["from .. import errors\n", "from ..errors import E\n", "import pkg.errors\n"])
def test_checker_resolves_relative_and_absolute_imports(tmp_path: Path, source: str) -> None:
    modules = _write(tmp_path, {"pkg.__init__": "", "pkg.errors": "", "pkg.sub.__init__": "", "pkg.sub.m": source})
    assert import_graph(modules)["pkg.sub.m"] == {"pkg.errors"}
