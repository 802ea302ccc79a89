"""No import cycles among slimformer's modules: neither in the graph of module-level imports (what runs when a
module is imported) nor once the imports inside functions (which defer torch and transformers until a command
needs them) are added. `if TYPE_CHECKING:` blocks, which never run, are left out of both."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_nodes(tree: ast.Module, everywhere: bool) -> list[ast.stmt]:
    """The import statements of a module: at module level only, or also inside functions; never the ones in an
    `if TYPE_CHECKING:` block."""
    if not everywhere:
        return list(tree.body)  # an `if TYPE_CHECKING:` block is an If, not an import: skipped
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    return [node for node in ast.walk(tree) if id(node) not in type_only]


def import_time_edges(name: str, path: Path, modules: dict[str, Path], everywhere: bool = False) -> set[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = set()
    for node in import_nodes(ast.parse(path.read_text()), everywhere):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                edges.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
    return {edge for edge in edges if edge in modules and edge != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_at_import_time() -> None:
    modules = module_names()
    assert "slimformer.stages" in modules and "slimformer.onnx.quantize" in modules
    graph = {name: import_time_edges(name, path, modules) for name, path in modules.items()}
    assert "slimformer.distill" in graph["slimformer.stages"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    modules = module_names()
    graph = {name: import_time_edges(name, path, modules, everywhere=True) for name, path in modules.items()}
    assert "slimformer.timing" in graph["slimformer.threads"]  # a function-level import is seen
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
