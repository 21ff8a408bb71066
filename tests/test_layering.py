"""The import rules of the layout: cli -> tasks -> {models, tuners, data}; the task modules (one workflow each)
never import one another, and models, tuners and data never import tasks. Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scpeft_hf"
TASKS = ("annotation", "integration", "attention", "embedding", "pretrain")  # the workflows, one module each


def imported_modules(path: Path) -> set[str]:
    """Absolute names (scpeft_hf.x.y) of the package modules `path` imports, at any depth."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("scpeft_hf")}


def test_task_modules_never_import_each_other():
    for task in TASKS:
        imports = imported_modules(PACKAGE / "tasks" / f"{task}.py")
        others = {f"scpeft_hf.tasks.{other}" for other in TASKS if other != task}
        assert not imports & others, f"tasks/{task}.py imports {sorted(imports & others)}"


def test_shared_task_modules_import_no_task():
    tasks = {f"scpeft_hf.tasks.{task}" for task in TASKS}
    for path in (PACKAGE / "tasks").glob("*.py"):
        if path.stem in TASKS:
            continue
        assert not imported_modules(path) & tasks, f"tasks/{path.name} is shared but imports a task"


def test_models_tuners_and_data_never_import_tasks_or_the_cli():
    for room in ("models", "tuners", "data", "datasets"):
        for path in (PACKAGE / room).rglob("*.py"):
            bad = {
                name
                for name in imported_modules(path)
                if name.startswith(("scpeft_hf.tasks", "scpeft_hf.cli"))
            }
            assert not bad, f"{path.relative_to(PACKAGE)} imports {sorted(bad)}"
