"""The package's layers point down: a module imports only from its own layer or below, and
the three tasks do not import each other (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vidseg_cli"

# Bottom to top. A module may import its own layer and any layer below it.
LAYERS: list[set[str]] = [
    {"errors", "options", "signals", "cores", "textures"},
    {"io", "weights", "metrics", "memory"},
    {"synthetic"},  # synthetic clips, written with io's sinks
    {"models"},
    {"engine", "train", "bench"},
    {"vos", "semseg", "predict"},
    {"batch"},
    {"cli", "__main__"},
]
TASKS = {"vos", "semseg", "predict"}


def part(module: str) -> str:
    """The top-level part of vidseg_cli a dotted module name lives in."""
    return module.split(".")[1]


def rank(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def imports(path: Path) -> set[str]:
    """Every vidseg_cli module a file imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vidseg_cli."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vidseg_cli."))
    return found


def arrows() -> list[tuple[str, str]]:
    """(importer, imported) for every import between parts of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "vidseg_cli." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.count(".") == 1 and module.endswith("__init__"):
            continue
        found += [(module, target) for target in imports(path) if part(target) != part(module)]
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert parts - {"__init__"} <= set().union(*LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{a} -> {b}" for a, b in arrows() if rank(part(b)) > rank(part(a))]
    assert not upward, "\n".join(upward)


def test_the_tasks_do_not_import_each_other():
    across = [f"{a} -> {b}" for a, b in arrows() if part(a) in TASKS and part(b) in TASKS]
    assert not across, "\n".join(across)
