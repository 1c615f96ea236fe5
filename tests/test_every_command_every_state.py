"""Every `alembic` command on every state a database can be in: a result or one line.

The states: no file, an empty file, each release's file, release files this
release refuses (one extra index, an unknown table), pending (at the baseline),
at head, and newer than the code (an unknown revision in alembic_version). The
commands only look (or print SQL), so the file's bytes never change, and a
missing file is not created.
"""

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.chain import BASELINE
from tests.conftest import settings_for
from tests.legacy_data import (
    RELEASE_FILES,
    VENV_BIN,
    command_environment,
    release_file,
    run_command,
    sha256_of,
)

UNKNOWN_REVISION = "ffffffffffff"
COMMANDS = ("current", "check", "history", "heads", "upgrade head --sql")
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} (DEBUG|INFO|WARNING) ")


def copy_release(name: str):
    def make(database: Path) -> None:
        shutil.copyfile(release_file(name), database)

    return make


def release_with(statement: str):
    def make(database: Path) -> None:
        shutil.copyfile(release_file("v2.1.0.db"), database)
        with sqlite3.connect(database) as connection:
            connection.execute(statement)
        connection.close()

    return make


def migrated_to(revision: str):
    def make(database: Path) -> None:
        from app.migration.guarded_run import upgrade_database

        settings = settings_for(URL.create("sqlite", database=str(database)), database.parent)
        upgrade_database(settings, revision)

    return make


def newer_than_the_code(database: Path) -> None:
    migrated_to("head")(database)
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (UNKNOWN_REVISION,))
    connection.close()


STATES = {
    "no file": None,
    "empty file": Path.touch,
    **{f"release {name}": copy_release(name) for name in RELEASE_FILES},
    "refused: extra index": release_with("CREATE INDEX ix_extra ON job (status)"),
    "refused: unknown table": release_with("CREATE TABLE notes (id INTEGER PRIMARY KEY)"),
    "pending": migrated_to(BASELINE),
    "at head": migrated_to("head"),
    "newer than the code": newer_than_the_code,
}


def refused(state: str, command: str) -> bool:
    """`check` wants the database at head; nothing reads a revision newer than the code."""
    if command == "check":
        return state != "at head"
    return state == "newer than the code" and command == "current"


@pytest.fixture(scope="module")
def state_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per state, made once; each test runs on a copy."""
    folder = tmp_path_factory.mktemp("states")
    files = {}
    for index, (state, make) in enumerate(STATES.items()):
        files[state] = folder / f"state{index}.db"
        if make is not None:
            make(files[state])
    return files


def database_in_state(
    state: str, state_files: dict[str, Path], folder: Path
) -> tuple[Path, str | None]:
    """A copy of the state's file in `folder` (none for "no file"), and its digest."""
    database = folder / "anibridge_jobs.db"
    if state_files[state].exists():
        shutil.copyfile(state_files[state], database)
    return database, sha256_of(database) if database.exists() else None


def assert_untouched(database: Path, before: str | None, folder: Path) -> None:
    """The file's bytes as they were, and nothing new beside it (no file made where none was)."""
    assert (sha256_of(database) if database.exists() else None) == before
    assert sorted(path.name for path in folder.iterdir()) == (
        ["anibridge_jobs.db"] if before else []
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("state", STATES)
def test_a_result_or_one_line(
    state: str, command: str, state_files: dict[str, Path], tmp_path: Path
) -> None:
    database, before = database_in_state(state, state_files, tmp_path)
    environ = command_environment(tmp_path, f"sqlite:///{database}")

    result = run_command([str(VENV_BIN / "alembic"), *command.split()], environ)

    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert (result.returncode != 0) == refused(state, command), output
    if result.returncode != 0:
        said = [line for line in output.splitlines() if not LOG_RECORD.match(line)]
        assert len(said) == 1 and said[0].startswith("FAILED: "), output
    assert_untouched(database, before, tmp_path)


PLAN_EXIT = {"at head": 0, "refused: extra index": 1, "refused: unknown table": 1}
PLAN_EXIT["newer than the code"] = 1


@pytest.mark.parametrize("state", STATES)
def test_anibridge_plan_says_what_the_upgrade_would_do_and_changes_nothing(
    state: str, state_files: dict[str, Path], tmp_path: Path
) -> None:
    """0 nothing to do, 2 something to do, 1 refused: the summary line first, never a traceback."""
    database, before = database_in_state(state, state_files, tmp_path)
    environ = command_environment(tmp_path, f"sqlite:///{database}")

    result = run_command([str(VENV_BIN / "anibridge"), "plan"], environ)

    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == PLAN_EXIT.get(state, 2), result.stdout + result.stderr
    assert result.stdout.startswith(("Nothing to do", "An upgrade would")), result.stdout
    assert_untouched(database, before, tmp_path)
