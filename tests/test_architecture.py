"""House rules of the package, checked on its source: no import cycle (function-level imports included), the
layers (common < data, models < core < evaluation, export < the commands on top) imported only downwards, data
and models independent of each other, Typer only in cli.py, the training loop imported only by what launches
it, no module over 400 lines, and tests that mirror the package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xgblora_cli"
TESTS = Path(__file__).resolve().parent
SUBPACKAGES = ("common", "data", "models", "core", "evaluation", "export", "generation")
# what each layer may import from the package besides itself (settings: recipe, recipe_file are plain data; the
# version from the package root)
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "models": {"common"},
    "core": {"common", "data", "models", "recipe", "recipe_file"},
    "evaluation": {"common", "data", "models", "core", "recipe", "recipe_file"},
    "export": {"common", "data", "models", "core", "recipe", "recipe_file"},
    "generation": {"common", "data", "models", "core", "recipe", "recipe_file"},
}
# test files at the top of tests/ that are about the whole tool rather than one module
TOPICAL_TESTS = {"test_architecture", "test_distributed", "test_errors", "test_real_model", "test_docs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """``{module: every module it imports anywhere in its file}`` (package modules and third-party roots)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        graph[module_name(path)] = found
    return graph


def test_no_import_cycles() -> None:
    graph = imports()
    internal = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(module: str, trail: list[str]) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(trail[trail.index(module):] + [module])
            return
        visiting.add(module)
        for dep in sorted(internal[module]):
            visit(dep, trail + [dep])
        visiting.discard(module)
        done.add(module)

    for module in sorted(internal):
        visit(module, [module])
    assert not cycles, cycles


def test_only_the_command_line_knows_typer() -> None:
    users = sorted(m for m, deps in imports().items() if any(d == "typer" or d.startswith("typer.") for d in deps))
    assert all(user.startswith("xgblora_cli.cli.") for user in users) and users


def test_the_training_loop_is_imported_only_by_what_launches_it() -> None:
    users = sorted(m for m, deps in imports().items() if "xgblora_cli.core.train" in deps)
    assert users == ["xgblora_cli.runner"]


def test_no_module_over_400_lines() -> None:
    long = {path.name: n for path in PACKAGE.rglob("*.py") if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def layer(module: str) -> str:
    """``xgblora_cli.core.train`` -> ``core``; a top-level module -> its own name."""
    return module.split(".")[1] if module.count(".") else module


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, deps in imports().items():
        own = layer(module)
        if own not in ALLOWED:
            continue
        for dep in deps:
            if dep.startswith("xgblora_cli.") and dep != "xgblora_cli.__version__" and layer(dep) not in ALLOWED[own] | {own}:
                wrong.append(f"{module} imports {dep}")
    assert not wrong, wrong


def test_tests_mirror_the_package() -> None:
    """tests/<layer>/test_<module>.py tests xgblora_cli/<layer>/<module>.py; top-level tests name a top module."""
    orphans = []
    for test in TESTS.rglob("test_*.py"):
        folder = test.parent.relative_to(TESTS)
        if folder.parts[:1] == ("scripts",) or folder.parts[:1] == ("benchmarks",):
            continue
        module = test.stem.removeprefix("test_")
        if folder == Path("."):
            if test.stem not in TOPICAL_TESTS and not (PACKAGE / f"{module}.py").is_file():
                orphans.append(str(test.relative_to(TESTS)))
        elif not (PACKAGE / folder / f"{module}.py").is_file():
            orphans.append(str(test.relative_to(TESTS)))
    assert not orphans, orphans
