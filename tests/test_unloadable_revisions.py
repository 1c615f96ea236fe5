"""A revision file left mid-edit: every command says which file and why, in one line.

A syntax error, a misspelt name or a bad import in a file under
migrations/versions stops Python loading it. Every `alembic`, `anibridge`,
manifest and lint command is run on a project copy holding such a file, against
a database at head: each fails with one line naming the file and the error, and
nothing is written (the database's bytes, the revision files, the manifest).
"""

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.migration.guarded_run import upgrade_database
from app.migration.manifest import manifest_path
from app.migration.unloadable_revisions import unloadable_revision_message
from tests.chain import InjectedRevision, copy_project, plant_revisions, versions_of
from tests.conftest import settings_for
from tests.legacy_data import VENV_BIN, command_environment, sha256_of

LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} (DEBUG|INFO|WARNING) ")
MID_EDIT = InjectedRevision(
    "c0ffee000022",
    "Give jobs a rank",
    '    op.add_column("job", sa.Column("rank", sa.Integer(), nullable=True))',
    '    op.drop_column("job", "rank")',
)
# What a developer leaves in a file mid-edit: (what is written after its imports, the error named).
BREAKAGES = {
    "syntax error": ("def rank(:", "SyntaxError: invalid syntax"),
    "name error": ("RANKS = rank_values()", "NameError: name 'rank_values' is not defined"),
    "bad import": ("from app.data.ranks import RANKS", "ModuleNotFoundError: No module named"),
}
COMMANDS = {
    "alembic upgrade head": ["alembic", "upgrade", "head"],
    "alembic downgrade -1": ["alembic", "downgrade", "-1"],
    "alembic stamp head": ["alembic", "stamp", "head"],
    "alembic current": ["alembic", "current"],
    "alembic check": ["alembic", "check"],
    "alembic history": ["alembic", "history"],
    "alembic heads": ["alembic", "heads"],
    "alembic show head": ["alembic", "show", "head"],
    "alembic upgrade head --sql": ["alembic", "upgrade", "head", "--sql"],
    "alembic revision --autogenerate": ["alembic", "revision", "--autogenerate", "-m", "next"],
    "alembic revision": ["alembic", "revision", "-m", "next"],
    "alembic merge heads": ["alembic", "merge", "heads", "-m", "merge"],
    "anibridge (serve)": ["anibridge"],
    "anibridge migrate": ["anibridge", "migrate"],
    "anibridge status": ["anibridge", "status"],
    "anibridge plan": ["anibridge", "plan"],
    "python -m app.migrate": ["python", "-m", "app.migrate"],
    "manifest": ["python", "-m", "app.migration.authoring.manifest"],
    "manifest check": ["python", "-m", "app.migration.authoring.manifest", "check"],
    "lint": ["python", "-m", "app.migration.authoring.lint"],
}


@pytest.fixture(scope="module")
def database_at_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("at-head")
    database = folder / "anibridge_jobs.db"
    upgrade_database(settings_for(URL.create("sqlite", database=str(database)), folder))
    return database


def broken_project(folder: Path, breakage: str) -> Path:
    """A project copy whose newest revision file has `breakage` after its imports."""
    project = copy_project(folder / "project")
    (path,) = plant_revisions(project, [MID_EDIT])
    source = path.read_text()
    imports_end = "from alembic import op\n"
    path.write_text(source.replace(imports_end, f"{imports_end}{breakage}\n", 1))
    return project


def project_files(project: Path) -> dict[str, str]:
    """The digest of every revision file and of the manifest."""
    files = [*versions_of(project).glob("*.py"), manifest_path(project / "migrations")]
    return {path.name: sha256_of(path) for path in files}


def run_in(project: Path, argv: list[str], data_dir: Path, database: Path):
    environ = command_environment(data_dir, f"sqlite:///{database}", PYTHONPATH=str(project))
    return subprocess.run(
        [str(VENV_BIN / argv[0]), *argv[1:]],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("breakage", BREAKAGES)
def test_one_line_names_the_file_and_nothing_is_written(
    breakage: str, command: str, database_at_head: Path, tmp_path: Path
) -> None:
    line, error = BREAKAGES[breakage]
    project = broken_project(tmp_path, line)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / database_at_head.name
    shutil.copyfile(database_at_head, database)
    before, files_before = sha256_of(database), project_files(project)

    result = run_in(project, COMMANDS[command], data_dir, database)

    output = result.stdout + result.stderr
    said = [line for line in output.splitlines() if not LOG_RECORD.match(line)]
    assert result.returncode != 0 and "Traceback" not in output, output
    assert len(said) == 1, output
    assert f"{MID_EDIT.file_suffix()} cannot be loaded: {error}" in said[0], said[0]
    assert re.search(r"\(line \d+\)", said[0]), said[0]
    assert sha256_of(database) == before
    assert project_files(project) == files_before
    assert {path.name for path in data_dir.iterdir()} <= {
        database.name,
        f"{database.name}.service-lock",
    }


def raised_by(path: Path, call_upgrade: bool) -> Exception:
    """What loading the revision file at `path` raises, or else calling its upgrade()."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if call_upgrade:
            module.upgrade()
    except Exception as exc:
        return exc
    raise AssertionError(f"{path.name} raised nothing")


def test_only_a_failure_to_load_is_named_so(tmp_path: Path) -> None:
    """A revision that loads and fails as it runs keeps its own error: it is no load failure."""
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    loads = versions / "runs_badly.py"
    loads.write_text("def upgrade():\n    return rank_values()\n")
    fails = versions / "loads_badly.py"
    fails.write_text("RANKS = rank_values()\n")

    assert unloadable_revision_message(raised_by(loads, call_upgrade=True), versions) is None
    assert unloadable_revision_message(raised_by(fails, call_upgrade=False), versions) == (
        "migrations/versions/loads_badly.py cannot be loaded: NameError: name 'rank_values' is "
        "not defined (line 1); fix it and run the command again"
    )
