"""The package boundaries the layout promises, read from each module's imports.

- `app.migration` (the migration subsystem) never imports SQLModel, FastAPI or
  the service (`app.data`, `app.api*`, `app.main`): an upgrade must keep working
  whatever the models have become, and the container's upgrade step must not
  pay for the service's imports.
- Its run-time part never imports the authoring tools (`app.migration.authoring`).
- `app.data` (the service's data layer) never imports the migration subsystem.
- `app.migration.sqlite_files` imports the standard library only: the fast
  at-head check runs before SQLAlchemy is imported.
"""

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
SERVICE_MODULES = ("sqlmodel", "fastapi", "uvicorn", "app.data", "app.api", "app.main")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_under(package: str) -> list[Path]:
    return sorted((APP / package).rglob("*.py"))


def reaching(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name
        for name in imports
        if any(name == prefix or name.startswith(f"{prefix}.") for prefix in forbidden)
    )


@pytest.mark.parametrize("path", modules_under("migration"), ids=lambda p: str(p.relative_to(APP)))
def test_migration_subsystem_never_imports_the_service(path: Path) -> None:
    assert reaching(imported_modules(path), SERVICE_MODULES) == []


@pytest.mark.parametrize(
    "path",
    [p for p in modules_under("migration") if "authoring" not in p.parts],
    ids=lambda p: str(p.relative_to(APP)),
)
def test_run_time_never_imports_the_authoring_tools(path: Path) -> None:
    assert reaching(imported_modules(path), ("app.migration.authoring",)) == []


@pytest.mark.parametrize("path", modules_under("data"), ids=lambda p: str(p.relative_to(APP)))
def test_data_layer_never_imports_the_migration_subsystem(path: Path) -> None:
    assert reaching(imported_modules(path), ("app.migration",)) == []


def test_sqlite_file_facts_need_only_the_standard_library() -> None:
    imports = imported_modules(APP / "migration" / "sqlite_files.py")
    top_level = {name.split(".")[0] for name in imports}
    assert top_level <= set(sys.stdlib_module_names), top_level - set(sys.stdlib_module_names)


def test_the_checker_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from app.data.models import metadata\n    import sqlmodel\n")
    assert reaching(imported_modules(module), SERVICE_MODULES) == [
        "app.data.models",
        "app.data.models.metadata",
        "sqlmodel",
    ]
