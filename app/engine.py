"""The one place that builds engines, for the service and for migrations.

Both dialects go through `make_engine`. The migration flavour differs on SQLite
(`use_driver_for_migrations`, which also adapts a connection someone else built
for the length of one run; see app.migration.connection.migration_settings):

* Python's sqlite3 module opens transactions only before DML, so DDL would
  autocommit statement by statement. The driver is put in autocommit mode and
  SQLAlchemy's `begin` emits `BEGIN IMMEDIATE` itself, so a whole upgrade is
  one transaction and takes SQLite's write lock at once.
* Foreign keys are off: a batch-mode table rebuild drops and recreates the
  table, which with foreign keys on would cascade-delete child rows. The
  upgrade checks `PRAGMA foreign_key_check` before it commits instead.

The read-only flavour serves commands that only look (`alembic current`,
`check`, `anibridge status`): SQLite opens the file with `mode=ro`, PostgreSQL
sessions are read-only, and neither waits more than a second on a lock an
upgrade holds.
"""

import glob
import logging
import os
import sqlite3
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.migration.sqlite_files import read_only_uri

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 30
READ_ONLY_LOCK_WAIT_S = 1
POSTGRES_CONNECT_TIMEOUT_S = 5
POSTGRES_READ_ONLY_OPTIONS = (
    f"-c default_transaction_read_only=on -c lock_timeout={READ_ONLY_LOCK_WAIT_S * 1000}"
)


def make_engine(url: URL, *, for_migrations: bool = False, read_only: bool = False) -> Engine:
    if read_only:
        return _make_read_only_engine(url)
    if url.get_backend_name() == "sqlite":
        return _make_sqlite_engine(url, for_migrations=for_migrations)
    if for_migrations:
        # Each statement sees what committed before it, whatever the server's
        # default: the version read after the advisory lock is the latest one.
        return create_engine(
            url,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
            poolclass=NullPool,
            isolation_level="READ COMMITTED",
        )
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    )


def _make_read_only_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        read_only_file = read_only_uri(url.database)
        return create_engine(
            url.set(database=read_only_file, query={"uri": "true"}),
            connect_args={"timeout": READ_ONLY_LOCK_WAIT_S},
            poolclass=NullPool,
        )
    return create_engine(
        url,
        connect_args={
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
            "options": POSTGRES_READ_ONLY_OPTIONS,
        },
        poolclass=NullPool,
    )


def _make_sqlite_engine(url: URL, *, for_migrations: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=NullPool if for_migrations else None,
    )

    @event.listens_for(engine, "connect")
    def _configure_connection(dbapi_connection, _record) -> None:
        if for_migrations:
            use_driver_for_migrations(dbapi_connection)
        else:
            dbapi_connection.execute("PRAGMA foreign_keys = ON")
        dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")

    if for_migrations:
        event.listen(engine, "begin", begin_immediate)
    return engine


@dataclass(frozen=True)
class DriverSettings:
    """What a sqlite3 connection does with transactions and foreign keys."""

    isolation_level: str | None
    foreign_keys: bool


def driver_settings(driver: sqlite3.Connection) -> DriverSettings:
    foreign_keys = driver.execute("PRAGMA foreign_keys").fetchone()[0]
    return DriverSettings(driver.isolation_level, bool(foreign_keys))


def put_driver_settings(driver: sqlite3.Connection, settings: DriverSettings) -> None:
    """Apply `settings`; outside a transaction, where `PRAGMA foreign_keys` takes effect."""
    driver.isolation_level = settings.isolation_level
    driver.execute(f"PRAGMA foreign_keys = {'ON' if settings.foreign_keys else 'OFF'}")


MIGRATION_DRIVER_SETTINGS = DriverSettings(isolation_level=None, foreign_keys=False)


def use_driver_for_migrations(driver: sqlite3.Connection) -> None:
    """The one place that gives a SQLite driver connection the migration settings."""
    put_driver_settings(driver, MIGRATION_DRIVER_SETTINGS)


def begin_immediate(connection: Connection) -> None:
    """Open the migration transaction with SQLite's write lock taken at once.

    When another process holds the write lock, log that (and who has the file
    open) before waiting for it up to SQLite's busy timeout.

    Not in Alembic's autocommit block (the AUTOCOMMIT isolation level): there
    each statement commits on its own, as on PostgreSQL, so a batched fill
    leaves the write lock free between its batches (app.migration.patterns).
    """
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    driver = connection.connection.driver_connection
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    except OperationalError as exc:
        if "locked" not in str(exc.orig):
            raise
    finally:
        driver.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
    database = connection.engine.url.database
    log.info(
        "Waiting for the SQLite file %s: another connection is writing to it (up to %d s)%s",
        database,
        SQLITE_BUSY_TIMEOUT_S,
        other_processes_using(database),
    )
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def other_processes_using(path: str) -> str:
    """`" (open in pid 12 python, ...)"` from /proc, or "" where that cannot be seen."""
    target = os.path.realpath(path)
    users = []
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        pid = int(fd_dir.split("/")[2])
        if pid == os.getpid():
            continue
        try:
            links = {os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)}
            if target in links:
                with open(f"/proc/{pid}/comm") as comm:
                    users.append(f"pid {pid} {comm.read().strip()}")
        except OSError:
            continue
    return f" (open in {', '.join(users)})" if users else ""


def is_migration_engine(engine: Engine) -> bool:
    """Whether `engine` came from `make_engine(..., for_migrations=True)` (SQLite only)."""
    return event.contains(engine, "begin", begin_immediate)
