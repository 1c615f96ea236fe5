"""Every way an upgrade cannot start ends in one clear line, a non-zero exit, and no write.

Run as the container runs them: `alembic upgrade head` and `python -m app.migrate`
in a subprocess from the repo root, configured only through the environment.
"""

import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.engine import make_engine
from app.migration.errors import DatabaseNewerThanCodeError
from app.migration.guarded_run import upgrade_database
from tests.chain import BASELINE
from tests.conftest import settings_for
from tests.legacy_data import (
    alembic_upgrade_head,
    command_environment,
    failure_line,
    python_migrate,
    sha256_of,
)

UNKNOWN_REVISION = "ffffffffffff"
UNREACHABLE_URL = "postgresql+psycopg://u:s3cretpw@127.0.0.1:1/db"
OTHER_UID = 65534

RUNNERS = {"alembic": (alembic_upgrade_head, "FAILED:"), "app.migrate": (python_migrate, "error:")}


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A database at head, written by this process."""
    path = tmp_path / "anibridge_jobs.db"
    upgrade_database(settings_for(URL.create("sqlite", database=str(path)), tmp_path))
    return path


def stamp_sqlite(database: Path, revision: str) -> None:
    connection = sqlite3.connect(database)
    try:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        connection.commit()
    finally:
        connection.close()


def assert_names_unknown_revision(line: str) -> None:
    assert UNKNOWN_REVISION in line
    assert "newer release" in line and "restore the backup" in line


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_database_at_an_unknown_revision_is_refused(database: Path, runner: str) -> None:
    stamp_sqlite(database, UNKNOWN_REVISION)
    checksum = sha256_of(database)
    run, marker = RUNNERS[runner]

    line = failure_line(run(command_environment(database.parent)), marker)

    assert_names_unknown_revision(line)
    assert sha256_of(database) == checksum
    assert not (database.parent / "backups").exists()


def test_postgres_database_at_an_unknown_revision_is_refused(
    postgres_url: URL, tmp_path: Path
) -> None:
    upgrade_database(settings_for(postgres_url, tmp_path))
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE alembic_version SET version_num = %s", (UNKNOWN_REVISION,)
        )

    with pytest.raises(DatabaseNewerThanCodeError) as refusal:
        upgrade_database(settings_for(postgres_url, tmp_path))

    assert_names_unknown_revision(str(refusal.value))
    with engine.connect() as connection:
        versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()
        assert list(versions) == [UNKNOWN_REVISION]
    engine.dispose()


NOT_SQLITE = {
    "random bytes": random.Random(1).randbytes(8192),
    "text file": "DATABASE_URL=sqlite:////data/anibridge_jobs.db\nÜbersicht\n".encode(),
}


@pytest.mark.parametrize("content", sorted(NOT_SQLITE))
def test_file_that_is_not_sqlite_is_refused(tmp_path: Path, content: str) -> None:
    database = tmp_path / "anibridge_jobs.db"
    database.write_bytes(NOT_SQLITE[content])

    line = failure_line(alembic_upgrade_head(command_environment(tmp_path)), "FAILED:")

    assert f"{database} is not a SQLite database" in line
    assert database.read_bytes() == NOT_SQLITE[content]


def test_unreadable_database_is_refused(database: Path) -> None:
    """The file belongs to another user; the command runs as root stripped of its powers."""
    checksum = sha256_of(database)
    os.chown(database, OTHER_UID, OTHER_UID)
    database.chmod(0o600)

    result = alembic_upgrade_head(command_environment(database.parent), without_root_powers=True)

    line = failure_line(result, "FAILED:")
    assert f"the database {database} is not readable and writable" in line
    assert sha256_of(database) == checksum


def test_read_only_data_dir_is_refused(database: Path) -> None:
    """With a revision pending, a writable folder would get a backup, a lock file and DDL."""
    stamp_sqlite(database, BASELINE)
    checksum = sha256_of(database)
    data_dir = database.parent
    os.chown(data_dir, OTHER_UID, OTHER_UID)
    data_dir.chmod(0o755)
    entries = sorted(data_dir.iterdir())

    result = alembic_upgrade_head(command_environment(data_dir), without_root_powers=True)

    line = failure_line(result, "FAILED:")
    assert f"the data folder {data_dir} is not writable" in line
    assert sha256_of(database) == checksum
    assert sorted(data_dir.iterdir()) == entries


def test_unreachable_postgres_fails_fast_without_showing_the_password(tmp_path: Path) -> None:
    environ = command_environment(tmp_path, UNREACHABLE_URL, DB_CONNECT_RETRIES="1")
    started = time.monotonic()

    result = alembic_upgrade_head(environ)

    assert time.monotonic() - started < 15
    line = failure_line(result, "FAILED:")
    assert "cannot use the database" in line and "127.0.0.1:1/db" in line
    assert "s3cretpw" not in result.stdout + result.stderr


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_malformed_database_url_is_named_in_one_line(tmp_path: Path, runner: str) -> None:
    run, marker = RUNNERS[runner]

    result = run(command_environment(tmp_path, "not a database url"))

    assert "DATABASE_URL" in failure_line(result, marker)
    assert list(tmp_path.iterdir()) == []


def test_database_url_with_a_bad_port_is_named_without_its_password(tmp_path: Path) -> None:
    result = alembic_upgrade_head(
        command_environment(tmp_path, "postgresql+psycopg://u:s3cretpw@db:port/anibridge")
    )

    assert "DATABASE_URL" in failure_line(result, "FAILED:")
    assert "s3cretpw" not in result.stdout + result.stderr
