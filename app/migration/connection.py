"""Open the migration connection, turning every way that fails into one clear line.

Checked before SQLite is asked to touch anything: the folder is writable, the
file is readable and writable (readable is enough for read-only commands) and
really is a SQLite database. PostgreSQL is
retried a bounded number of times (a database container may still be
starting). No message repeats the URL's password.
"""

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import Settings
from app.engine import is_migration_engine, make_engine
from app.migration.errors import DatabaseUnavailableError, MigrationError, describe_database_error
from app.migration.sqlite_files import is_sqlite_file

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
EMPTY_SQLITE = URL.create("sqlite")


def check_sqlite_file(path: Path, *, writable: bool = True) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise DatabaseUnavailableError(f"the folder {folder} of the database does not exist")
    if writable and not os.access(folder, os.W_OK | os.X_OK):
        raise DatabaseUnavailableError(
            f"the data folder {folder} is not writable by user {os.getuid()}; "
            "fix its ownership (PUID/PGID) or mount it read-write"
        )
    if not path.exists():
        return
    access, needed = (
        (os.R_OK | os.W_OK, "readable and writable") if writable else (os.R_OK, "readable")
    )
    if not os.access(path, access):
        raise DatabaseUnavailableError(
            f"the database {path} is not {needed} by user {os.getuid()}; "
            "fix its ownership (PUID/PGID) or permissions"
        )
    if not is_sqlite_file(path, empty_ok=True):
        raise DatabaseUnavailableError(
            f"{path} is not a SQLite database; restore it from DATA_DIR/backups "
            "or move it away to start afresh"
        )


@contextmanager
def migration_connection(
    settings: Settings, handed_in: Any = None, *, read_only: bool = False
) -> Iterator[Connection]:
    """The connection env.py runs on: the caller's if one was handed in, else a new one.

    Callers hand in a Connection, or something with `connect()` (an Engine, or
    pytest-alembic's wrapper that hands back a connection it already holds).
    """
    if handed_in is None:
        with connect_for_migrations(settings, read_only=read_only) as connection:
            yield connection
    elif isinstance(handed_in, Connection):
        yield handed_in
    else:
        with handed_in.connect() as connection:
            yield connection


def require_migration_settings(connection: Connection) -> None:
    """Refuse a SQLite connection not built by `make_engine(..., for_migrations=True)`.

    Checked before a command that writes (upgrade, downgrade, stamp) on any
    connection, which matters for one handed in through config.attributes.

    Anything else would run each DDL statement in its own transaction (the
    driver's implicit transactions) or cascade-delete child rows during a
    batch rebuild (foreign keys on).
    """
    if connection.dialect.name != "sqlite":
        return
    driver = connection.connection.driver_connection
    foreign_keys = driver.execute("PRAGMA foreign_keys").fetchone()[0]
    if (
        driver.isolation_level is not None
        or foreign_keys
        or not is_migration_engine(connection.engine)
    ):
        raise MigrationError(
            "the connection handed to Alembic (config.attributes['connection']) lacks the "
            "migration settings (driver autocommit, BEGIN IMMEDIATE, foreign keys off); "
            "build it with app.engine.make_engine(url, for_migrations=True)"
        )


@contextmanager
def connect_for_migrations(settings: Settings, *, read_only: bool = False) -> Iterator[Connection]:
    """A checked connection; `read_only` ones write nothing and take no write lock.

    A SQLite file that does not exist yet reads as an empty database, and is
    not created.
    """
    url = settings.database_url
    if url.get_backend_name() == "sqlite" and read_only and not Path(url.database).exists():
        engine = make_engine(EMPTY_SQLITE)
    else:
        if url.get_backend_name() == "sqlite":
            check_sqlite_file(Path(url.database), writable=not read_only)
        engine = make_engine(url, for_migrations=not read_only, read_only=read_only)
    # A SQLite migration connection is probed by the upgrade once it holds the
    # upgrade lock: another upgrade's long table rebuild must be waited for, not
    # run into SQLite's busy timeout.
    probe_now = read_only or url.get_backend_name() != "sqlite"
    try:
        with _connect_with_retries(engine, url, settings.connect_retries, probe_now) as connection:
            yield connection
    except OperationalError as exc:
        if read_only and is_lock_conflict(exc):
            raise DatabaseUnavailableError(
                f"cannot use the database {url.render_as_string(hide_password=True)}: "
                f"{describe_database_error(exc, url)}"
            ) from None
        raise
    finally:
        engine.dispose()


def is_lock_conflict(exc: OperationalError) -> bool:
    """SQLite's busy file, or PostgreSQL's lock_timeout (SQLSTATE 55P03)."""
    return "database is locked" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "55P03"


def probe(connection: Connection) -> None:
    """Read something, so a corrupt file or a dead server shows now, as one line.

    On SQLite the probe goes through the raw driver connection, which is in
    autocommit mode for migrations: it must not take the write lock that
    another process's upgrade may be holding while this one waits its turn.
    Its errors are the driver's own (`sqlite3.Error`), not SQLAlchemy's.
    """
    try:
        _read_something(connection)
    except (DBAPIError, sqlite3.Error) as exc:
        url = connection.engine.url
        raise DatabaseUnavailableError(
            f"cannot use the database {url.render_as_string(hide_password=True)}: "
            f"{describe_database_error(exc, url)}"
        ) from None


def _read_something(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.connection.driver_connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    else:
        connection.execute(text("SELECT 1"))
        connection.rollback()


@contextmanager
def _connect_with_retries(engine, url: URL, retries: int, probe_now: bool) -> Iterator[Connection]:
    safe_url = url.render_as_string(hide_password=True)
    for attempt in range(retries + 1):
        try:
            connection = engine.connect()
            if probe_now:
                _read_something(connection)
            break
        except (DBAPIError, sqlite3.Error) as exc:
            reason = describe_database_error(exc, url)
            if url.get_backend_name() == "sqlite" or attempt == retries:
                raise DatabaseUnavailableError(
                    f"cannot use the database {safe_url}: {reason}"
                ) from None
            log.warning(
                "Database not reachable yet (attempt %d of %d): %s",
                attempt + 1,
                retries + 1,
                reason,
            )
            time.sleep(RETRY_DELAY_S)
    with connection:
        yield connection
