"""Paths no command can use as the SQLite database: one line from every command, nothing made.

A directory where the file should be (what a bind mount of a missing file
makes), DATA_DIR that is a file, a symlink to a file that does not exist (in a
folder that does: SQLite would create it), and a FIFO (opening it would
block). Every command that opens the database names the path in one line,
exits non-zero, and leaves the folder as it was: no empty file, no lock file,
no backups folder, no `.before-restore-` file, nothing at the symlink's target.
"""

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.legacy_data import VENV_BIN, command_environment, release_file, run_command

DATABASE = "anibridge_jobs.db"
ANIBRIDGE = str(VENV_BIN / "anibridge")
ALEMBIC = str(VENV_BIN / "alembic")
ANIBRIDGE_ERROR = "anibridge: error: "
ALEMBIC_ERROR = "FAILED: "
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} (DEBUG|INFO|WARNING) ")

COMMANDS = {
    "anibridge (serve)": ([ANIBRIDGE], ANIBRIDGE_ERROR),
    "anibridge migrate": ([ANIBRIDGE, "migrate"], ANIBRIDGE_ERROR),
    "anibridge status": ([ANIBRIDGE, "status"], ANIBRIDGE_ERROR),
    "anibridge status --json": ([ANIBRIDGE, "status", "--json"], ANIBRIDGE_ERROR),
    "anibridge plan": ([ANIBRIDGE, "plan"], ANIBRIDGE_ERROR),
    "anibridge plan --json": ([ANIBRIDGE, "plan", "--json"], ANIBRIDGE_ERROR),
    "anibridge restore": ([ANIBRIDGE, "restore", str(release_file("v2.1.0.db"))], ANIBRIDGE_ERROR),
    "python -m app.migrate": ([sys.executable, "-m", "app.migrate"], ANIBRIDGE_ERROR),
    "alembic current": ([ALEMBIC, "current"], ALEMBIC_ERROR),
    "alembic check": ([ALEMBIC, "check"], ALEMBIC_ERROR),
    "alembic upgrade head": ([ALEMBIC, "upgrade", "head"], ALEMBIC_ERROR),
    "alembic downgrade -1": ([ALEMBIC, "downgrade", "-1"], ALEMBIC_ERROR),
    "alembic history -i": ([ALEMBIC, "history", "-i"], ALEMBIC_ERROR),
}


def directory_at_the_database(data_dir: Path) -> Path:
    (data_dir / DATABASE).mkdir()
    return data_dir / DATABASE


def data_dir_is_a_file(data_dir: Path) -> Path:
    data_dir.rmdir()
    data_dir.write_text("not a folder\n")
    return data_dir


def dangling_symlink(data_dir: Path) -> Path:
    (data_dir / DATABASE).symlink_to(data_dir / "moved.db")
    return data_dir / DATABASE


def fifo_at_the_database(data_dir: Path) -> Path:
    os.mkfifo(data_dir / DATABASE)
    return data_dir / DATABASE


BAD_PATHS: dict[str, Callable[[Path], Path]] = {
    "directory": directory_at_the_database,
    "DATA_DIR a file": data_dir_is_a_file,
    "dangling symlink": dangling_symlink,
    "FIFO": fifo_at_the_database,
}


def tree(folder: Path) -> list[tuple[str, int]]:
    """Every path under `folder` (itself included) with its file type, without following links."""
    paths = [folder, *folder.rglob("*")] if folder.is_dir() else [folder]
    return sorted((str(path), path.lstat().st_mode & 0o170000) for path in paths)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad_path", BAD_PATHS)
def test_one_line_naming_the_path_and_nothing_made(
    bad_path: str, command: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    named = BAD_PATHS[bad_path](data_dir)
    before = tree(tmp_path)
    argv, marker = COMMANDS[command]

    result = run_command(argv, command_environment(data_dir))

    output = result.stdout + result.stderr
    said = [line for line in output.splitlines() if not LOG_RECORD.match(line)]
    assert result.returncode != 0, output
    assert len(said) == 1 and said[0].startswith(marker), output
    assert str(named) in said[0], output
    assert tree(tmp_path) == before
