"""The package's import graph, read from the source with ``ast``: no import cycles, backends below the engine and the
exporter, and generation free of device code.

Edges: every ``import`` and ``from ... import`` at any depth (module level, inside functions and classes), relative
imports resolved, ``from pkg import name`` an edge to ``pkg.name`` when that is a module (else to ``pkg``). An import
under ``if TYPE_CHECKING:`` never runs, so it is no edge of a cycle; the layering rules count it all the same (a
backend has no business naming the engine's types either). Importing ``a.b.c`` is an edge to ``a.b.c`` only: the
parent packages it also initialises are left out, since a sibling import through a half-initialised parent is the
normal case, not a cycle.
"""

from __future__ import annotations

import ast
import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "glm_engine"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE


# Layering: what modules under a prefix may not import (prefix match on dotted names).
BACKENDS_MUST_NOT_IMPORT = ("glm_engine.export", "glm_engine.engine", "glm_engine.cli")
# The exported-folder format sits below everything that reads or writes it.
EXPORTED_MUST_NOT_IMPORT = (
    *BACKENDS_MUST_NOT_IMPORT,
    "glm_engine.backends.onnxruntime",
    "glm_engine.backends.tensorrt",
)
GENERATION_MUST_NOT_IMPORT = (
    "glm_engine.backends.cuda",
    "glm_engine.backends.rocm_dcu",
    "glm_engine.backends.ascend",
    "glm_engine.backends.torch_cuda",  # the torch.cuda API's shared helpers
    "glm_engine.kernels",
)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:``

    def where(self, modules: dict[str, Path]) -> str:
        return f"{self.source} -> {self.target} ({modules[self.source].name}:{self.line})"


@dataclass
class ImportGraph:
    root: Path
    modules: dict[str, Path]  # dotted name -> file
    edges: list[Edge]
    torch_cuda: dict[str, list[int]]  # module -> lines that name torch.cuda

    def runtime_successors(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for edge in self.edges:
            if not edge.typing_only:
                out[edge.source].add(edge.target)
        return out


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package rooted at ``root`` by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``tree`` at any depth, with whether it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of the package that ``name`` (a dotted import path) names or lies in."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def resolve(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package's modules an import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        return [t for alias in node.names if (t := _known(alias.name, modules)) is not None]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    targets = []
    for alias in node.names:
        target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
        if target is not None:
            targets.append(target)
    return targets


def _torch_cuda_lines(tree: ast.AST) -> list[int]:
    """Lines naming ``torch.cuda``: the attribute, ``import torch.cuda``, ``from torch.cuda import``, ``from torch
    import cuda``."""

    def names_it(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr == "cuda" and isinstance(node.value, ast.Name) and node.value.id == "torch"
        if isinstance(node, ast.Import):
            return any(a.name == "torch.cuda" or a.name.startswith("torch.cuda.") for a in node.names)
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            from_torch = node.module == "torch" and any(a.name == "cuda" for a in node.names)
            return from_torch or node.module == "torch.cuda" or node.module.startswith("torch.cuda.")
        return False

    return sorted(node.lineno for node in ast.walk(tree) if names_it(node))


def import_graph(root: Path, package: str) -> ImportGraph:
    """The import graph of the package whose folder is ``root``."""
    modules = package_modules(root, package)
    edges, torch_cuda = [], {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, typing_only in _imports(tree):
            for target in resolve(module, path.name == "__init__.py", node, modules):
                if target != module:
                    edges.append(Edge(module, target, node.lineno, typing_only))
        if lines := _torch_cuda_lines(tree):
            torch_cuda[module] = lines
    return ImportGraph(root, modules, edges, torch_cuda)


def strongly_connected(successors: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(successors):
        if start in index:
            continue
        work = [(start, iter(sorted(successors[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(successors[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return sorted(found, key=sorted)


def one_cycle(component: frozenset[str], successors: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (by name), as ``[a, b, ..., a]``."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(successors[node] & component):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def describe_cycles(graph: ImportGraph, components: list[frozenset[str]]) -> str:
    """Each component's modules and one concrete cycle through it, with the import's file and line per step."""
    successors = graph.runtime_successors()
    lines = []
    for component in components:
        cycle = one_cycle(component, successors)
        steps = [
            next(e for e in graph.edges if e.source == a and e.target == b and not e.typing_only).where(graph.modules)
            for a, b in itertools.pairwise(cycle)
        ]
        lines.append(f"cycle among {', '.join(sorted(component))}:\n    " + "\n    ".join(steps))
    return "\n".join(lines)


def forbidden(graph: ImportGraph, sources: str, targets: tuple[str, ...]) -> list[str]:
    """Imports from modules under ``sources`` of modules under any of ``targets`` (prefix match on dotted names)."""

    return [
        edge.where(graph.modules)
        for edge in graph.edges
        if _under(edge.source, sources) and any(_under(edge.target, t) for t in targets)
    ]


def _under(name: str, prefix: str) -> bool:
    """``name`` is the module ``prefix`` or lies in it (``glm_engine.exported`` is not under ``glm_engine.export``)."""
    return name == prefix or name.startswith(prefix + ".")


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return import_graph(PACKAGE_DIR, PACKAGE)


# --- the walker itself, on synthetic packages -------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_walker_finds_a_cycle_through_a_function_level_relative_import(tmp_path: Path) -> None:
    folder = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",  # ``from pkg import submodule``: an edge to pkg.b
            "b.py": "def f():\n    from .sub import c\n    return c\n",  # function level, relative
            "sub/__init__.py": "",
            "sub/c.py": "import pkg.a\n",
            "d.py": "from pkg.a import b\n",  # into the cycle, not part of it
        },
    )
    found = import_graph(folder, "pkg")
    components = strongly_connected(found.runtime_successors())
    assert components == [frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})]
    assert one_cycle(components[0], found.runtime_successors()) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    assert "pkg.b -> pkg.sub.c (b.py:2)" in describe_cycles(found, components)


def test_walker_ignores_type_checking_imports_for_cycles_but_not_for_layering(tmp_path: Path) -> None:
    folder = _write_package(
        tmp_path,
        {
            "__init__.py": "from pkg.low import thing\n",  # the package's __init__ importing a name of a submodule
            "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import H\nthing = 1\n",
            "high.py": "from . import low\nfrom pkg import thing\n",
        },
    )
    found = import_graph(folder, "pkg")
    assert strongly_connected(found.runtime_successors()) == []
    assert forbidden(found, "pkg.low", ("pkg.high",)) == ["pkg.low -> pkg.high (low.py:3)"]
    assert {(e.source, e.target) for e in found.edges} == {
        ("pkg", "pkg.low"),
        ("pkg.low", "pkg.high"),
        ("pkg.high", "pkg.low"),
        ("pkg.high", "pkg"),  # ``thing`` is no submodule: the edge goes to the package's __init__
    }


def test_walker_sees_torch_cuda_in_every_spelling(tmp_path: Path) -> None:
    folder = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "import torch\n\ndef f():\n    return torch.cuda.Stream()\n",
            "b.py": "from torch import cuda\n",
            "c.py": "import torch.cuda\n",
            "d.py": "import torch\n\nx = torch.zeros(1)\n",
        },
    )
    assert import_graph(folder, "pkg").torch_cuda == {"pkg.a": [4], "pkg.b": [1], "pkg.c": [1]}


# --- glm_engine ------------------------------------------------------------------------------------------------


def test_the_walker_reads_the_whole_package(graph: ImportGraph) -> None:
    assert {"glm_engine", "glm_engine.backends.base", "glm_engine.backends.tensorrt.runner"} <= set(graph.modules)
    edges = {(e.source, e.target) for e in graph.edges}
    # a function-level import (the runner is imported only when a model is opened)
    assert ("glm_engine.backends.onnxruntime.backend", "glm_engine.backends.onnxruntime.runner") in edges


def test_no_import_cycles(graph: ImportGraph) -> None:
    components = strongly_connected(graph.runtime_successors())
    assert not components, describe_cycles(graph, components)


def test_backends_import_neither_the_exporter_nor_the_engine_nor_the_cli(graph: ImportGraph) -> None:
    bad = forbidden(graph, "glm_engine.backends", BACKENDS_MUST_NOT_IMPORT)
    assert not bad, "backends may import glm_engine.exported, never these:\n" + "\n".join(bad)


def test_the_exported_format_imports_no_reader_or_writer_of_it(graph: ImportGraph) -> None:
    bad = forbidden(graph, "glm_engine.exported", EXPORTED_MUST_NOT_IMPORT)
    assert not bad, "glm_engine.exported sits below the backends, the engine and the exporter:\n" + "\n".join(bad)


def test_generation_holds_no_device_code(graph: ImportGraph) -> None:
    bad = forbidden(graph, "glm_engine.generation", GENERATION_MUST_NOT_IMPORT)
    bad += [
        f"{module} names torch.cuda ({graph.modules[module].name}:{', '.join(map(str, lines))})"
        for module, lines in graph.torch_cuda.items()
        if _under(module, "glm_engine.generation")
    ]
    assert not bad, "generation must stay device-agnostic:\n" + "\n".join(bad)
