"""`python -m app.migration.start_up`, the container's start-up step, run as a process by this user.

tests/test_entrypoint.py runs it behind docker/entrypoint.sh as root with gosu;
these tests need neither: the settings' one-line refusals, one upgrade then
none, the hand-over to the service on PostgreSQL, and an at-head start that
imports nothing of SQLAlchemy or Alembic before the command runs.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import DATABASE_FILE_NAME, SETTING_NAMES
from app.migration.at_head import vouched_head
from tests.conftest import REPO_ROOT

USAGE = "usage: python -m app.migration.start_up ids | run COMMAND [ARGUMENT...]"

PRINT_SWITCH = ["sh", "-c", 'echo "migrate=${DB_MIGRATE_ON_STARTUP:-unset}"']


def start_up(*arguments: str, python_options: tuple[str, ...] = (), **settings: str):
    env = {key: value for key, value in os.environ.items() if key not in SETTING_NAMES}
    return subprocess.run(
        [sys.executable, *python_options, "-m", "app.migration.start_up", *arguments],
        cwd=REPO_ROOT,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DB_MIGRATE_ON_STARTUP", "maybe"), ("DB_BACKUP_KEEP", "-1"), ("LOG_LEVEL", "loud")],
)
def test_a_bad_setting_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = start_up("run", *PRINT_SWITCH, DATA_DIR=str(tmp_path / "data"), **{variable: value})

    assert result.returncode == 2
    assert result.stderr.startswith(f"[entrypoint] error: {variable}='{value}' is not ")
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run"], "no command given (the image's default is: anibridge)"),
        ([], USAGE),
        (["ids", "extra"], USAGE),
    ],
)
def test_a_call_without_a_command_is_one_line(arguments: list[str], message: str) -> None:
    result = start_up(*arguments)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"[entrypoint] error: {message}"]


def test_one_upgrade_then_the_fast_check_and_the_command_is_told_not_to_upgrade(
    tmp_path: Path,
) -> None:
    first = start_up("run", *PRINT_SWITCH, DATA_DIR=str(tmp_path))
    second = start_up("run", *PRINT_SWITCH, DATA_DIR=str(tmp_path))

    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout == "migrate=false\n"
    assert "upgrading the database schema: alembic upgrade head" in first.stderr
    assert f"the database schema is at head ({vouched_head()})" in second.stderr
    assert "alembic" not in second.stderr.replace("alembic upgrade head", "")
    assert (tmp_path / DATABASE_FILE_NAME).exists()


def test_at_head_nothing_of_sqlalchemy_or_alembic_is_imported_before_the_command(
    tmp_path: Path,
) -> None:
    assert start_up("run", "true", DATA_DIR=str(tmp_path)).returncode == 0

    result = start_up("run", "true", python_options=("-X", "importtime"), DATA_DIR=str(tmp_path))

    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "app.migration.at_head" in imported
    assert [name for name in imported if name.split(".")[0] in ("sqlalchemy", "alembic")] == []


def test_on_postgresql_the_service_is_handed_the_check(tmp_path: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/never_reached"
    anibridge = tmp_path / "bin" / "anibridge"
    anibridge.parent.mkdir()
    anibridge.write_text('#!/bin/sh\necho "anibridge $* migrate=${DB_MIGRATE_ON_STARTUP:-unset}"\n')
    anibridge.chmod(0o755)

    served = start_up("run", str(anibridge), "serve", DATABASE_URL=url)
    other = start_up("run", "true", DATABASE_URL=url, DB_CONNECT_RETRIES="0")

    assert served.returncode == 0, served.stderr
    assert served.stdout == "anibridge serve migrate=unset\n"
    assert "upgrading" not in served.stderr
    assert other.returncode != 0
    assert "upgrading the database schema: alembic upgrade head" in other.stderr
    assert "the database upgrade failed" in other.stderr.splitlines()[-1]


def test_the_root_set_up_gets_checked_ids(tmp_path: Path) -> None:
    result = start_up("ids", PUID="007", PGID="0", CHOWN_RECURSIVE=" No ")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"7 0 false {DATABASE_FILE_NAME}\n"


@pytest.mark.parametrize("command", ["plan", "status", "restore", "migrate"])
def test_commands_that_report_or_replace_the_database_run_on_it_as_it_is(
    tmp_path: Path, command: str
) -> None:
    """`docker run ... anibridge plan` must see the pending upgrade, not run it first."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / DATABASE_FILE_NAME).write_bytes(b"")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = start_up("run", "anibridge", command, "--help", DATA_DIR=str(data_dir), PATH=path)
    assert result.returncode == 0, result.stderr
    assert f"anibridge {command} runs without upgrading first" in result.stderr
    assert (data_dir / DATABASE_FILE_NAME).read_bytes() == b""
