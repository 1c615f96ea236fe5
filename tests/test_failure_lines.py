"""Failures an operator can cause end in one line that names the fix, and lose nothing.

Each case runs the real commands (`alembic upgrade head`, `python -m app.migrate`,
`anibridge`) in a subprocess. Faults the machine would cause (a full disk, a
busy database) are brought about inside the child by a `sitecustomize` module
on its PYTHONPATH, which the interpreter imports at start.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from app.migration.guarded_run import upgrade_database
from tests.chain import BASELINE, HEAD, copy_project, plant_revisions
from tests.conftest import settings_for
from tests.faults import FAILING, upgrade_environment
from tests.legacy_data import (
    MULTI_SITE,
    REPO_ROOT,
    command_environment,
    failure_line,
    insert_rows,
    legacy_rows,
    run_command,
    sha256_of,
    sqlite_revision,
)

COMMANDS = {
    "alembic": ([sys.executable, "-m", "alembic", "upgrade", "head"], "FAILED:"),
    "app.migrate": ([sys.executable, "-m", "app.migrate"], "anibridge: error:"),
    "anibridge": ([sys.executable, "-m", "app.main"], "anibridge: error:"),
}

FULL_DISK = """
from sqlalchemy import Engine, event

@event.listens_for(Engine, "connect")
def _no_room_to_grow(dbapi_connection, _record):
    pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
    dbapi_connection.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
"""


def baseline_database(data_dir: Path, **environ: str) -> Path:
    """A SQLite database at the baseline with rows: head is pending."""
    database = data_dir / "anibridge_jobs.db"
    upgrade_database(
        settings_for(URL.create("sqlite", database=str(database)), data_dir, **environ), BASELINE
    )
    with sqlite3.connect(database) as connection:
        insert_rows(connection, legacy_rows(MULTI_SITE, 30))
    connection.close()
    return database


def backups(data_dir: Path) -> set[Path]:
    folder = data_dir / "backups"
    return set(folder.iterdir()) if folder.exists() else set()


def with_sitecustomize(environ: dict, folder: Path, source: str) -> dict:
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(source)
    path = os.pathsep.join(filter(None, [str(folder), environ.get("PYTHONPATH", str(REPO_ROOT))]))
    return {**environ, "PYTHONPATH": path}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_full_disk_is_one_line_naming_the_fix_and_the_backup(tmp_path: Path, command: str) -> None:
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir)
    checksum = sha256_of(database)
    environ = with_sitecustomize(command_environment(data_dir), tmp_path / "site", FULL_DISK)
    argv, marker = COMMANDS[command]

    line = failure_line(run_command(argv, environ), marker)

    assert "database or disk is full" in line and "free space" in line
    (backup,) = backups(data_dir)
    assert f"backed up in {backup}" in line
    assert sha256_of(database) == checksum
    assert sha256_of(backup) == checksum


def test_a_restart_loop_keeps_one_backup_per_state_and_deletes_none(tmp_path: Path) -> None:
    """A failing revision retried on every start, with the tightest retention (keep 1)."""
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir, DB_BACKUP_KEEP="1")
    url = URL.create("sqlite", database=str(database))
    upgrade_database(settings_for(url, data_dir, DB_BACKUP_KEEP="1"))
    (earlier,) = backups(data_dir)
    assert sqlite_revision(earlier) == BASELINE
    project = copy_project(tmp_path / "project")
    plant_revisions(project, [FAILING])
    environ = {**upgrade_environment(project, url, data_dir), "DB_BACKUP_KEEP": "1"}
    checksum = sha256_of(database)

    lines = []
    for _ in range(4):
        result = subprocess.run(
            [sys.executable, "-m", "app.migrate"],
            cwd=project,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines.append(failure_line(result, "anibridge: error:"))

    (new,) = backups(data_dir) - {earlier}
    assert sqlite_revision(new) == HEAD and sha256_of(new) == checksum
    assert sqlite_revision(earlier) == BASELINE
    for line in lines:
        assert "injected failure" in line and f"backed up in {new}" in line
    assert sha256_of(database) == checksum


def stamp_twice(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute("INSERT INTO alembic_version VALUES (?)", (BASELINE,))
    connection.close()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_two_rows_in_alembic_version_name_the_stale_one(tmp_path: Path, command: str) -> None:
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir)
    upgrade_database(settings_for(URL.create("sqlite", database=str(database)), data_dir))
    stamp_twice(database)
    checksum = sha256_of(database)
    argv, marker = COMMANDS[command]

    line = failure_line(run_command(argv, command_environment(data_dir)), marker)

    assert "alembic_version holds 2 rows" in line
    assert f"DELETE FROM alembic_version WHERE version_num = '{BASELINE}'" in line
    assert sha256_of(database) == checksum


def test_debug_log_level_adds_the_traceback(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir)
    upgrade_database(settings_for(URL.create("sqlite", database=str(database)), data_dir))
    stamp_twice(database)
    argv, _ = COMMANDS["anibridge"]

    result = run_command(argv, command_environment(data_dir, LOG_LEVEL="debug"))

    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("anibridge: error: alembic_version")


SHORT_BUSY_TIMEOUT = """
import app.engine

app.engine.SQLITE_BUSY_TIMEOUT_S = 1
"""


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_database_locked_by_another_process_is_waited_for_then_named(
    tmp_path: Path, command: str
) -> None:
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir)
    checksum = sha256_of(database)
    environ = with_sitecustomize(
        command_environment(data_dir), tmp_path / "site", SHORT_BUSY_TIMEOUT
    )
    argv, marker = COMMANDS[command]
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        result = run_command(argv, environ)
    finally:
        holder.close()

    line = failure_line(result, marker)
    assert "database is locked" in line and "try again when it has finished" in line
    assert "Waiting for the SQLite file" in result.stderr and "(up to 1 s)" in result.stderr
    assert f"pid {os.getpid()} " in result.stderr
    assert sha256_of(database) == checksum


@pytest.fixture
def limited_role(postgres_admin: sa.Engine, postgres_url: URL) -> Iterator[str]:
    """A login role that may use the test database's public schema but create nothing in it."""
    role = f"anibridge_limited_{uuid.uuid4().hex[:8]}"
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    in_test_database = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with in_test_database.begin() as connection:
        connection.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    yield role
    with in_test_database.begin() as connection:
        connection.exec_driver_sql(f'DROP OWNED BY "{role}" CASCADE')
    in_test_database.dispose()
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        connection.exec_driver_sql(f'DROP ROLE "{role}"')


def postgres_tables(url: URL) -> list[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_postgres_role_without_create_is_told_what_to_grant(
    limited_role: str, postgres_url: URL, tmp_path: Path, command: str
) -> None:
    url = postgres_url.set(username=limited_role).render_as_string(hide_password=False)
    argv, marker = COMMANDS[command]

    line = failure_line(run_command(argv, command_environment(tmp_path, url)), marker)

    assert "permission denied for schema public" in line
    assert f"GRANT CREATE ON SCHEMA public TO {limited_role}" in line
    assert postgres_tables(postgres_url) == []


def test_postgres_search_path_without_a_usable_schema_is_named(
    postgres_admin: sa.Engine, limited_role: str, postgres_url: URL, tmp_path: Path
) -> None:
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(
            f'ALTER ROLE "{limited_role}" IN DATABASE "{postgres_url.database}" '
            "SET search_path = missing_schema"
        )
    url = postgres_url.set(username=limited_role).render_as_string(hide_password=False)
    argv, marker = COMMANDS["alembic"]

    line = failure_line(run_command(argv, command_environment(tmp_path, url)), marker)

    assert "no schema has been selected to create in" in line
    assert "CREATE SCHEMA" in line and "search_path" in line
    assert postgres_tables(postgres_url) == []


SLOW_COPIER = """#!/bin/sh
echo $$ > "{pid_file}"
exec sleep 60
"""


def process_alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for a reaper counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_sigterm_during_a_backup_leaves_no_copier_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = baseline_database(data_dir)
    checksum = sha256_of(database)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    pid_file = tmp_path / "copier.pid"
    (fake_bin / "cp").write_text(SLOW_COPIER.format(pid_file=pid_file))
    (fake_bin / "cp").chmod(0o755)
    environ = command_environment(data_dir, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    upgrade = subprocess.Popen(
        [sys.executable, "-m", "app.migrate"],
        cwd=REPO_ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    copier = None
    try:
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30)
        copier = int(pid_file.read_text())
        upgrade.send_signal(signal.SIGTERM)
        upgrade.wait(30)

        assert wait_until(lambda: not process_alive(copier), 5), "the copier outlived its parent"
    finally:
        upgrade.kill()
        if copier is not None and process_alive(copier):
            os.kill(copier, signal.SIGKILL)
    assert sha256_of(database) == checksum
    assert sqlite_revision(database) == BASELINE
