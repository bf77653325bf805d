"""The package's arrows point one way: face → study → results → analysis → engine → core.

A module may import its own package and the layers below it, never one above; and no package
import hides inside a function (the usual way a cycle is dodged)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "batchscale"
LAYERS = {"core": 0, "engine": 1, "analysis": 2, "results": 3, "study": 4, "face": 5}
FACES = {"cli", "bench", "__main__", "api", "integrations"}  # api: the Python face
CORE = {"__init__", "errors", "config", "config_checks", "files", "machine"}


def layer(module: str) -> str:
    """'batchscale.engine.train' → 'engine'; a top-level module is core or a face."""
    parts = module.split(".")[1:]
    if not parts:
        return "core"
    if parts[0] in LAYERS:
        return parts[0]
    if parts[0] in FACES:
        return "face"
    assert parts[0] in CORE, f"batchscale.{parts[0]} belongs to no layer: add it to one"
    return "core"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, module: str):
    """(line, imported batchscale module, inside a function?) for every import in a module."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = {id(inner) for f in functions for inner in ast.walk(f)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{module}:{node.lineno} relative import")
            base = node.module or ""
            names = [f"{base}.{a.name}" if base == "batchscale" else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name == "batchscale" or name.startswith("batchscale."):
                yield node.lineno, name, id(node) in nested


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = "face" if module == "batchscale" else layer(module)  # the root re-exports api
        for line, name, in_function in imports(ast.parse(path.read_text()), module):
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
            if in_function:
                found.append(f"{where} inside a function")
            target = layer(name)
            if LAYERS[target] > LAYERS[own]:
                found.append(f"{where}: {own} may not import {target} (a higher layer)")
            elif target == own and own in ("analysis", "results", "study") and \
                    name.split(".")[1] != module.split(".")[1]:
                found.append(f"{where}: crosses packages")
    return found


def test_no_module_imports_a_higher_layer_or_hides_an_import_in_a_function():
    assert violations() == []


def test_the_checker_catches_an_upward_import_and_a_hidden_one(tmp_path):
    source = ("from batchscale.results.report import write_report\n"
              "def f():\n    from batchscale.engine import train\n")
    found = list(imports(ast.parse(source), "batchscale.engine.step"))
    assert [(name, hidden) for _, name, hidden in found] == [
        ("batchscale.results.report", False), ("batchscale.engine", True)]
    assert LAYERS[layer(found[0][1])] > LAYERS[layer("batchscale.engine.step")]
