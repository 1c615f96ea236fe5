"""Open the migration connection, turning every way that fails into one clear line.

Checked before SQLite is asked to touch anything: the path is a file (or
nothing yet), the folder is writable, the file is readable and writable
(readable is enough for read-only commands) and really is a SQLite database.
PostgreSQL is retried a bounded number of times while it is not reachable (a
database container may still be starting); an error waiting cannot cure (no
such database or role, a wrong password) fails at once. No message repeats the
URL's password.
"""

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from app.config import ConfigError, Settings, load_settings
from app.engine import (
    begin_immediate,
    driver_settings,
    is_migration_engine,
    make_engine,
    put_driver_settings,
    use_driver_for_migrations,
)
from app.migration.errors import (
    DatabaseUnavailableError,
    MigrationError,
    describe_database_error,
    is_lock_timeout,
)
from app.migration.sqlite_files import reading_refusal, upgrade_refusal

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
EMPTY_SQLITE = URL.create("sqlite")
REFUSED_FIX = (
    "the server is up and refused it, so waiting will not help: check the database name, "
    "user and password in DATABASE_URL (and that the role may connect)"
)


def check_sqlite_file(path: Path, *, writable: bool = True) -> None:
    """Refuse, before SQLite touches anything, a file the run cannot use.

    The checks are app.migration.sqlite_files's; a writing run also needs the
    folder to exist (DATA_DIR is created before this).
    """
    if writable and not os.path.lexists(path.parent):
        raise DatabaseUnavailableError(f"the folder {path.parent} of the database does not exist")
    refusal = upgrade_refusal(path) if writable else reading_refusal(path)
    if refusal is not None:
        raise DatabaseUnavailableError(refusal)


def upgrade_file_refusal(settings: Settings) -> str | None:
    """What the upgrade refuses in a SQLite file before it writes (its own check), or None."""
    if not settings.is_sqlite:
        return None
    return upgrade_refusal(Path(settings.database_url.database))


@contextmanager
def handed_in_connection(handed_in: Any) -> Iterator[Connection]:
    """The connection a caller handed to env.py through `config.attributes["connection"]`.

    A Connection is used as it is; anything with `connect()` (an Engine, or
    pytest-alembic's wrapper that hands back a connection it already holds) is
    asked for one.
    """
    if isinstance(handed_in, Connection):
        yield handed_in
        return
    with handed_in.connect() as connection:
        yield connection


@contextmanager
def migration_settings(connection: Connection) -> Iterator[None]:
    """Give a SQLite connection, whoever built it, the migration settings for one run.

    A writing run needs driver autocommit with `BEGIN IMMEDIATE` (else each DDL
    statement would commit on its own) and foreign keys off (else a batch-mode
    table rebuild would cascade-delete child rows). A connection from
    `make_engine(url, for_migrations=True)` has them already; any other (a plain
    `create_engine`, pytest-alembic's) gets them here and its own settings back
    once the run's transaction has ended.

    A caller's open transaction is joined as it is: it already holds everything
    the run writes. Foreign keys cannot be switched inside one, so that case is
    refused when they are on.
    """
    if connection.dialect.name != "sqlite" or is_migration_engine(connection.engine):
        yield
        return
    driver = connection.connection.driver_connection
    previous = driver_settings(driver)
    caller_transaction = driver.in_transaction or connection.in_transaction()
    if caller_transaction and previous.foreign_keys:
        raise MigrationError(
            "the connection handed to Alembic has foreign keys on and is inside a "
            "transaction, where SQLite cannot switch them off for the run; hand it in "
            "outside a transaction, or with PRAGMA foreign_keys=OFF"
        )
    if driver.in_transaction:
        yield
        return
    use_driver_for_migrations(driver)
    event.listen(connection, "begin", begin_immediate)
    try:
        if connection.in_transaction():
            begin_immediate(connection)
        yield
    finally:
        event.remove(connection, "begin", begin_immediate)
        if driver.in_transaction:
            driver.isolation_level = previous.isolation_level
        else:
            put_driver_settings(driver, previous)


def settings_for_handed_in(connection: Connection) -> Settings:
    """Settings for a run on a connection the caller opened, with no settings of its own.

    The options (lock timeout, backups kept) come from the environment; the
    database is the connection's. A SQLite file's backups go to `backups/` beside
    it, as they do for the default DATA_DIR layout, not into the working folder.
    """
    environ = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    try:
        settings = load_settings(environ)
    except ConfigError as exc:
        raise MigrationError(str(exc)) from None
    url = connection.engine.url
    data_dir = settings.data_dir
    if url.get_backend_name() == "sqlite" and url.database:
        data_dir = Path(url.database).resolve().parent
    return dataclasses.replace(settings, database_url=url, data_dir=data_dir)


@contextmanager
def connect_for_migrations(settings: Settings, *, read_only: bool = False) -> Iterator[Connection]:
    """A checked connection; `read_only` ones write nothing and take no write lock.

    A SQLite file that does not exist yet reads as an empty database, and is
    not created.
    """
    url = settings.database_url
    if url.get_backend_name() == "sqlite":
        check_sqlite_file(Path(url.database), writable=not read_only)
    if url.get_backend_name() == "sqlite" and read_only and not Path(url.database).exists():
        engine = make_engine(EMPTY_SQLITE)
    else:
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
    return "database is locked" in str(exc.orig) or is_lock_timeout(exc)


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


def server_refused_connection(engine) -> bool:
    """Whether PostgreSQL is up and refused the connection for a reason waiting cannot cure.

    psycopg gives a failed connection no SQLSTATE (`sqlstate` is None), but
    libpq's PQping tells the cases apart: OK means the server accepts
    connections, so it refused this database, role or password (3D000, 28000,
    28P01; also a full `max_connections`); REJECT (starting up, shutting down,
    in recovery) and NO_RESPONSE are worth waiting for.
    """
    from psycopg import pq

    libpq_uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return pq.PGconn.ping(libpq_uri.encode()) == pq.Ping.OK


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
            if server_refused_connection(engine):
                raise DatabaseUnavailableError(
                    f"cannot use the database {safe_url}: {reason}; {REFUSED_FIX}"
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
