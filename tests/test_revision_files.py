"""Static checks on migrations/versions: names, the single head, imports, lint, docstrings,
downgrades.

Fast and database-free. `imported_top_level_modules` is shared with
test_autogenerate.py, which applies it to freshly generated revisions.

The order of the revisions is their `down_revision` links, nothing else: the
date a file name starts with is when `alembic revision` wrote it, and no check
compares names with the chain. Names cannot keep that order by themselves
(file_template has minutes, two revisions of one minute sort by their random
ids, a colleague's clock may run ahead, and a revision rebased onto one written
later keeps its older date), so a check on it would fail on correct revisions
and ask for renames by hand (tests/test_revision_authoring.py writes such pairs).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import Script

from app.migration.revisions import PROJECT_ROOT, script_directory, single_head

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
RUFF = Path(sys.executable).with_name("ruff")
FILE_NAME = re.compile(r"^\d{4}_\d{2}_\d{2}_\d{4}-(?P<revision>[0-9a-f]{12})_[a-z0-9_]+\.py$")
FORBIDDEN_IMPORTS = {"app", "sqlmodel"}
REVISION_API = "app.migration.patterns"
"""The one module of the app a revision may import: helpers written for revisions to keep
(outside_transaction, fill_in_batches), not models that move on."""
REVISION_FILES = sorted(VERSIONS_DIR.glob("*.py"))


def revision_chain() -> list[Script]:
    """The revisions from base to head, following `down_revision` links."""
    return list(reversed(list(script_directory().walk_revisions())))


def imported_modules(path: Path) -> set[str]:
    """The module of every `import` and `from ... import` in the file."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def imported_top_level_modules(path: Path) -> set[str]:
    """The top-level package of every `import` and `from ... import` in the file."""
    return {module.split(".")[0] for module in imported_modules(path)}


def forbidden_imports(path: Path) -> set[str]:
    """What the file imports from the app (but its revision API) or from sqlmodel."""
    return {
        module
        for module in imported_modules(path) - {REVISION_API}
        if module.split(".")[0] in FORBIDDEN_IMPORTS
    }


def function_body(tree: ast.Module, name: str) -> list[ast.stmt]:
    """The statements of a module-level function, without its docstring."""
    function = next(
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name
    )
    body = function.body
    if ast.get_docstring(function) is not None:
        body = body[1:]
    return body


def run_ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )


def test_every_file_is_a_revision_of_the_chain() -> None:
    chain = {Path(script.path).name for script in revision_chain()}
    assert {path.name for path in REVISION_FILES} == chain


def test_single_head() -> None:
    """SeveralHeadsError, if raised, says how to join the heads."""
    single_head(script_directory())


def revision_of(path: Path) -> Script:
    match = FILE_NAME.match(path.name)
    assert match, f"{path.name} does not match YYYY_MM_DD_HHMM-<rev>_<slug>.py"
    return script_directory().get_revision(match["revision"])


@pytest.mark.parametrize("path", REVISION_FILES, ids=lambda path: path.name)
def test_file_name_is_dated_and_names_its_revision(path: Path) -> None:
    assert revision_of(path).path == str(path)


@pytest.mark.parametrize("path", REVISION_FILES, ids=lambda path: path.name)
def test_revision_does_not_import_the_app_or_sqlmodel(path: Path) -> None:
    assert forbidden_imports(path) == set()


def test_a_revision_may_import_the_revision_helpers_only(tmp_path: Path) -> None:
    revision = tmp_path / "revision.py"
    revision.write_text(
        "import sqlmodel\nfrom app.data.models import Job\n"
        f"from {REVISION_API} import fill_in_batches, outside_transaction\n"
    )

    assert forbidden_imports(revision) == {"sqlmodel", "app.data.models"}


@pytest.mark.parametrize("path", REVISION_FILES, ids=lambda path: path.name)
def test_revision_has_a_docstring_and_a_real_downgrade(path: Path) -> None:
    """A merge revision (`alembic merge heads`) only joins heads: it has nothing to undo."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree) or ""
    assert docstring.splitlines() and docstring.splitlines()[0].strip()
    if revision_of(path).is_merge_point:
        return
    downgrade = function_body(tree, "downgrade")
    assert downgrade and not all(isinstance(statement, ast.Pass) for statement in downgrade)


def test_migrations_pass_ruff_check() -> None:
    result = run_ruff("check", "migrations")
    assert result.returncode == 0, result.stdout + result.stderr


def test_migrations_pass_ruff_format_check() -> None:
    result = run_ruff("format", "--check", "migrations")
    assert result.returncode == 0, result.stdout + result.stderr
