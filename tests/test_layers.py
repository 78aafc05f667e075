"""The package's shape: layers point one way, no import circles, no file over 600 lines.

docs/design.md draws the layers; these tests keep them true as the code grows. Imports are read
from the source (every ``import`` and ``from ... import``, also inside functions, which is where
the lazy ones live); imports under ``if TYPE_CHECKING:`` are for annotations only and do not
count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nerfmine"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the package that holds the attribute."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            if name.split(".")[0] == "nerfmine":
                target = _resolve(name, known)
                if target is not None and target != module:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_checker_sees_circles_and_lazy_imports(tmp_path):
    """The checker itself: a circle made of a lazy import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    src = tmp_path / "nerfmine"
    src.mkdir()
    (src / "x.py").write_text("def f():\n    from nerfmine import y\n")
    (src / "y.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from nerfmine import x\n")
    known = {"nerfmine.x": src / "x.py", "nerfmine.y": src / "y.py"}
    assert _imports(src / "x.py", "nerfmine.x", known) == {"nerfmine.y"}
    assert _imports(src / "y.py", "nerfmine.y", known) == set()


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_ops_import_nothing_above_them():
    """``nerfmine.ops`` is the bottom layer: stateless ops and their kernels; it may use the
    package's errors and nothing else of nerfmine (design.md, "Layers")."""
    bad = {name: sorted(t for t in targets if not t.startswith("nerfmine.ops")
                        and t not in ("nerfmine", "nerfmine.errors"))
           for name, targets in _graph().items() if name.startswith("nerfmine.ops")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_modules_that_own_state_do_not_reach_into_training():
    """Modules that own parameters or state (field, occupancy grid, miner) and the trained scene
    use ops and configs, never the trainer, its step or the command line."""
    upper = ("nerfmine.trainer", "nerfmine.train_step", "nerfmine.cli", "nerfmine.viewer",
             "nerfmine.bench", "nerfmine.evaluator")
    graph = _graph()
    for name in ("nerfmine.field", "nerfmine.occupancy", "nerfmine.miner", "nerfmine.scene",
                 "nerfmine.cameras", "nerfmine.render"):
        if name in graph:
            assert not [t for t in graph[name] if t.startswith(upper)], name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: _module_name(p))
def test_no_source_file_over_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it"
