"""The library's modules import each other without a cycle, counting imports inside functions too: a cycle means
two modules own parts of one job (e.g. a file format kept with one of its readers while its writer needs it)."""

from __future__ import annotations

import ast

from tests.support.builders import ROOT

PACKAGE = ROOT / "lora_pipeline"


def _module(path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] if node.level else [])
            target = ".".join(p for p in (base, node.module or "") if p) if node.level else (node.module or "")
            found |= {c for c in [target, *(f"{target}.{a.name}" for a in node.names)] if c in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (a depth-first search for a back edge), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_the_library_has_no_import_cycle() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module(p) for p in paths}
    graph = {_module(p): _imports(p, modules) for p in paths}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert graph["lora_pipeline.models"] and graph["lora_pipeline.inference"]  # the scan sees imports
    assert _cycle(graph) == []
