"""Commands that only read (`alembic current`, `check`, `history`) never wait and never write.

They are told apart from writing runs with Alembic's public API
(`app.migration.guarded_run.writes_to_database`), run on a read-only connection, and take
no upgrade lock: while another process holds the upgrade lock and a write
transaction, they still answer at once, on SQLite and PostgreSQL.
"""

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL

from app.config import Settings
from app.migration.guarded_run import upgrade_database
from app.migration.journal import history_table
from app.migration.locking import POSTGRES_LOCK_KEY
from app.migration.revisions import alembic_config, plan_run, script_directory
from app.migration.sqlite_files import migration_lock_path
from tests.chain import BASELINE, CHAIN, HEAD, after
from tests.conftest import settings_for
from tests.legacy_data import VENV_BIN, command_environment, run_command

UNKNOWN_REVISION = "ffffffffffff"
READ_ONLY_COMMANDS = {
    "current": HEAD,
    "check": "No new upgrade operations detected",
    "history -i": f"{HEAD} (head) (current)",
    "heads": HEAD,
}
PROMPT_S = 15


def alembic(args: list[str], settings: Settings) -> tuple[int, str, float]:
    environ = command_environment(
        settings.data_dir,
        settings.database_url.render_as_string(hide_password=False),
        DB_MIGRATION_LOCK_TIMEOUT="600",
    )
    started = time.monotonic()
    result = run_command([str(VENV_BIN / "alembic"), *args], environ)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


@contextmanager
def upgrade_in_progress(settings: Settings) -> Iterator[None]:
    """Hold what a running upgrade holds: its lock, and a transaction that altered a table.

    On PostgreSQL the ALTER TABLE holds the table's strongest lock until the end.
    """
    url = settings.database_url
    if url.get_backend_name() == "sqlite":
        fd = os.open(migration_lock_path(url.database), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = sqlite3.connect(url.database, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE alembic_version SET version_num = version_num")
        writer.execute("ALTER TABLE job ADD COLUMN rebuilding INTEGER")
        try:
            yield
        finally:
            writer.close()
            os.close(fd)
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as writer:
        writer.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
        writer.execute(sa.text("UPDATE alembic_version SET version_num = version_num"))
        writer.execute(sa.text("ALTER TABLE job ADD COLUMN rebuilding INTEGER"))
        yield
        writer.rollback()
    engine.dispose()


@pytest.mark.parametrize("args", READ_ONLY_COMMANDS)
def test_read_only_commands_answer_while_an_upgrade_runs(settings: Settings, args: str) -> None:
    upgrade_database(settings)

    with upgrade_in_progress(settings):
        returncode, output, seconds = alembic(args.split(), settings)

    assert returncode == 0, output
    assert READ_ONLY_COMMANDS[args] in output
    assert seconds < PROMPT_S
    assert "Waiting" not in output


def test_read_only_commands_do_not_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    settings = settings_for(URL.create("sqlite", database=str(tmp_path / "db.sqlite")), tmp_path)

    for args in READ_ONLY_COMMANDS:
        returncode, output, _ = alembic(args.split(), settings)
        assert returncode == 0 or "not up to date" in output, output

    assert sorted(path.name for path in tmp_path.iterdir()) == []


def stamp(settings: Settings, revision: str) -> None:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_current_names_an_unknown_revision_and_the_release_to_run(settings: Settings) -> None:
    upgrade_database(settings)
    stamp(settings, UNKNOWN_REVISION)

    returncode, output, _ = alembic(["current"], settings)

    assert returncode != 0 and "Traceback" not in output
    (line,) = [line for line in output.splitlines() if line.startswith("FAILED:")]
    assert UNKNOWN_REVISION in line
    assert "does not know" in line and "newer release" in line


def test_unknown_revision_names_the_release_that_applied_it(settings: Settings) -> None:
    """A newer release with the migration history left a row saying who it was."""
    upgrade_database(settings)
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            history_table.insert().values(
                revision=UNKNOWN_REVISION,
                direction="upgrade",
                applied_at=datetime(2027, 3, 1, 12, 0, tzinfo=UTC),
                duration_s=0.5,
                app_version="0.9.1",
                checksum="0" * 64,
            )
        )
    engine.dispose()
    stamp(settings, UNKNOWN_REVISION)

    returncode, output, _ = alembic(["current"], settings)

    (line,) = [line for line in output.splitlines() if line.startswith("FAILED:")]
    assert "AniBridge 0.9.1 applied it on 2027-03-01; run that release (or newer)" in line


def test_writing_and_reading_runs_are_told_apart(settings: Settings) -> None:
    """Through Alembic's own command functions, as the CLI and pytest-alembic call them."""
    config = alembic_config(settings=settings)
    command.upgrade(config, "head")
    lock = migration_lock_path(settings.database_url.database) if settings.is_sqlite else None

    with upgrade_in_progress(settings):
        started = time.monotonic()
        command.current(config)
        command.check(config)
        assert time.monotonic() - started < PROMPT_S

    command.downgrade(config, "-1")
    assert lock is None or lock.exists()


@pytest.mark.parametrize(
    ("current", "destination", "direction", "revisions"),
    [
        ((), "head", "upgrade", CHAIN),
        ((), (HEAD,), "upgrade", CHAIN),
        ((BASELINE,), "head", "upgrade", tuple(after(BASELINE))),
        ((), "+1", "upgrade", (BASELINE,)),
        ((HEAD,), HEAD, "none", ()),
        ((HEAD,), "-1", "downgrade", (HEAD,)),
        ((HEAD,), None, "downgrade", CHAIN[::-1]),
        ((BASELINE,), BASELINE, "none", ()),
        ((), None, "none", ()),
    ],
)
def test_plan_finds_the_direction_from_the_revisions(
    current, destination, direction, revisions
) -> None:
    plan = plan_run(script_directory(), current, destination)

    assert (plan.direction, plan.revisions) == (direction, revisions)
