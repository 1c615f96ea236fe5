"""Serialise concurrent upgrades of one database.

SQLite: an exclusive `flock` on a lock file beside the database, shared by
every process and container that mounts the same volume. PostgreSQL: a
transaction-level advisory lock, released by commit, rollback or a dead
connection. Either way a killed holder frees the lock at once, and waiters log
while they wait and give up after a bound.
"""

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL

from app.config import migration_lock_path
from app.db.engine import make_engine
from app.db.errors import MigrationError, MigrationLockTimeoutError

log = logging.getLogger(__name__)

POSTGRES_LOCK_KEY = 0x616E6962  # "anib": one key for every AniBridge upgrade
POLL_INTERVAL_S = 0.1
ADVISORY_LOCK_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = 0 AND objid = CAST(:key AS oid) AND objsubid = 1)"
)
LOG_EVERY_S = 10.0


@contextmanager
def sqlite_upgrade_lock(connection: Connection, timeout_s: float) -> Iterator[None]:
    """Hold the lock file of a SQLite database; does nothing on other engines.

    Taken before the transaction begins, so waiters wait here, logged and
    bounded, rather than on SQLite's silent busy timeout.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    with _sqlite_file_lock(migration_lock_path(connection.engine.url.database), timeout_s):
        yield


def take_postgres_upgrade_lock(connection: Connection, timeout_s: float) -> None:
    """Take the advisory lock for the current transaction; does nothing on SQLite."""
    if connection.dialect.name == "postgresql":
        _wait_for(lambda: _try_postgres_lock(connection), timeout_s, "the PostgreSQL advisory lock")


def upgrade_running(url: URL) -> bool:
    """Whether an upgrade holds the lock of the database at `url`, found without waiting.

    SQLite: a shared, non-blocking try on the lock file (a missing file means
    no upgrade ever started). PostgreSQL: the advisory lock in `pg_locks`.
    """
    if url.get_backend_name() == "sqlite":
        return _sqlite_lock_held(migration_lock_path(url.database))
    return _postgres_lock_held(url)


def _sqlite_lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _postgres_lock_held(url: URL) -> bool:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            return bool(connection.execute(ADVISORY_LOCK_HELD, {"key": POSTGRES_LOCK_KEY}).scalar())
    finally:
        engine.dispose()


@contextmanager
def _sqlite_file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MigrationError(
            f"cannot create the migration lock {path}: {exc.strerror}; "
            "make the data directory writable by the service user"
        ) from None
    try:
        _wait_for(lambda: _try_flock(fd), timeout_s, str(path))
        yield
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_postgres_lock(connection: Connection) -> bool:
    query = text("SELECT pg_try_advisory_xact_lock(:key)")
    return bool(connection.execute(query, {"key": POSTGRES_LOCK_KEY}).scalar())


def _wait_for(try_lock: Callable[[], bool], timeout_s: float, what: str) -> None:
    started = time.monotonic()
    next_log = started
    while not try_lock():
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise MigrationLockTimeoutError(
                f"another upgrade held {what} for over {timeout_s:.0f} s; wait for it to "
                "finish or stop it, or raise DB_MIGRATION_LOCK_TIMEOUT"
            )
        if time.monotonic() >= next_log:
            log.info("Waiting for another upgrade to finish (%s, %.0f s so far)", what, waited)
            next_log += LOG_EVERY_S
        time.sleep(POLL_INTERVAL_S)
