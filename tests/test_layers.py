"""The import graph of revbench/ keeps its layers (docs/adding-a-technique.md): each package imports only the
layers below it or its own layer, no import circle, and the three technique axes stand apart.

The graph is read from the source (`ast`), every import counted: module level, inside functions and under
TYPE_CHECKING, since a lazy import runs up a layer as surely as an eager one.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "revbench"

# Lowest first. A package may import its own layer and those below; the orchestrator-level readers of records
# (check, reports, quality, benchmarks) sit beside the orchestrator.
LAYERS: list[tuple[str, ...]] = [
    ("units", "ranks", "env", "processes", "progress", "measure", "records"),
    ("workload", "models", "data", "pretrained", "spec"),
    ("activations", "states", "loss", "revffn", "revexact"),
    ("methods",),
    ("harness",),
    ("estimate",),
    ("orchestrator", "check", "reports", "quality", "benchmarks"),
    ("commands", "cli", "__main__"),
]
AXES = ("activations", "states", "loss")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ["revbench", *path.relative_to(ROOT).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The revbench module an imported name lives in (a name imported from a module is that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {target for name in names if (target := _resolve(name)) and target != module}
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def test_every_package_has_a_layer() -> None:
    unplaced = sorted({_package(m) for m in MODULES if m != "revbench"} - set(RANK))
    assert not unplaced, f"place these packages in LAYERS: {unplaced}"


def test_no_import_circle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(reversed(exc.args[1]))}")


def test_no_import_runs_up_a_layer() -> None:
    up = [f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
          if module != "revbench" and target != "revbench" and RANK[_package(target)] > RANK[_package(module)]]
    assert not up, "imports that run up a layer:\n" + "\n".join(sorted(up))


def test_the_technique_axes_stand_apart() -> None:
    across = [f"{module} -> {target}" for module, targets in GRAPH.items() for target in targets
              if _package(module) in AXES and _package(target) in AXES and _package(target) != _package(module)]
    assert not across, "a technique axis imports another:\n" + "\n".join(sorted(across))


def test_no_module_past_the_line_limit() -> None:
    long = {str(path.relative_to(ROOT)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"
