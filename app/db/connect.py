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

from app.config import SQLITE_HEADER, Settings
from app.db.engine import make_engine
from app.db.errors import DatabaseUnavailableError

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
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise DatabaseUnavailableError(
            f"{path} is not a SQLite database; restore it from DATA_DIR/backups "
            "or move it away to start afresh"
        )


def describe_failure(exc: DBAPIError | sqlite3.Error, url: URL) -> str:
    """The driver's first line, password masked; a locked SQLite file says who may hold it."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    reason = str(orig).strip().splitlines()[0] if orig else type(exc).__name__
    if "database is locked" in reason or "lock timeout" in reason:
        reason += " (an upgrade or another writer holds it; try again when it has finished)"
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return reason


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
    try:
        with _connect_with_retries(engine, url, settings.connect_retries) as connection:
            yield connection
    except OperationalError as exc:
        if read_only and is_lock_conflict(exc):
            raise DatabaseUnavailableError(
                f"cannot use the database {url.render_as_string(hide_password=True)}: "
                f"{describe_failure(exc, url)}"
            ) from None
        raise
    finally:
        engine.dispose()


def is_lock_conflict(exc: OperationalError) -> bool:
    """SQLite's busy file, or PostgreSQL's lock_timeout (SQLSTATE 55P03)."""
    return "database is locked" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "55P03"


def _probe(connection: Connection) -> None:
    """Read something, so a corrupt file or a dead server shows now.

    On SQLite the probe goes through the raw driver connection, which is in
    autocommit mode for migrations: it must not take the write lock that
    another process's upgrade may be holding while this one waits its turn.
    Its errors are the driver's own (`sqlite3.Error`), not SQLAlchemy's.
    """
    if connection.dialect.name == "sqlite":
        connection.connection.driver_connection.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    else:
        connection.execute(text("SELECT 1"))
        connection.rollback()


@contextmanager
def _connect_with_retries(engine, url: URL, retries: int) -> Iterator[Connection]:
    safe_url = url.render_as_string(hide_password=True)
    for attempt in range(retries + 1):
        try:
            connection = engine.connect()
            _probe(connection)
            break
        except (DBAPIError, sqlite3.Error) as exc:
            reason = describe_failure(exc, url)
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
