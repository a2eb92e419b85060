"""The shape the next engineer relies on: layers that import only downwards, no import cycle,
modules small enough to read whole and functions short enough to hold in one's head.

Read from the source (ast), so it holds for imports inside functions too: a cycle dodged by
importing late is still a cycle to the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "tasks", "flows")
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100
# What each layer may import from the project: schemas describe, tasks do, flows orchestrate.
MAY_IMPORT = {"schemas": {"schemas"}, "tasks": {"schemas", "tasks"}, "flows": set(PACKAGES)}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from tasks import store` imports a module; `from tasks.db import connect` not
                child = f"{base}.{alias.name}"
                out.add(child if child in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle_through(start: str) -> list[str] | None:
    """One import path from `start` back to itself, if there is one."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(GRAPH[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_layout_is_found() -> None:
    # The checks below would pass vacuously on an empty tree.
    assert {"tasks.errors", "flows.pipeline", "schemas.report"} <= MODULES.keys()
    assert "tasks.db" in GRAPH["tasks.store"] or "tasks.errors" in GRAPH["tasks.store"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_import_cycle(name: str) -> None:
    cycle = _cycle_through(name)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layers_import_downwards(name: str) -> None:
    layer = name.split(".")[0]
    upward = {m for m in GRAPH[name] if m.split(".")[0] not in MAY_IMPORT[layer]}
    assert not upward, f"{name} imports {sorted(upward)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("flows")))
def test_prefect_is_imported_only_by_the_flows(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] == "prefect"]


def test_modules_are_small_enough_to_read_whole() -> None:
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long


def test_functions_are_short_enough_to_hold_in_mind() -> None:
    long = {}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long[f"{name}.{node.name}"] = lines
    assert not long
