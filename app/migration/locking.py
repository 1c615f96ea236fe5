"""Serialise concurrent upgrades of one database, and keep restores away from users.

SQLite: an exclusive `flock` on a lock file beside the database, shared by
every process and container that mounts the same volume; the holder writes its
pid and host into the file, so waiters can say whom they wait for. PostgreSQL:
a session-level advisory lock, held across the commits of Alembic's autocommit
blocks and released at the end of the run or by a dead connection, then bounds
on how long each statement waits for table locks. Either way a killed holder
frees the lock at once, and waiters log while they wait and give up after a
bound.

A running service holds a second lock file shared for its lifetime;
`anibridge restore` takes both exclusively, or refuses.
"""

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from app.migration.errors import (
    DatabaseInUseError,
    MigrationError,
    MigrationLockTimeoutError,
    describe_os_error,
)
from app.migration.sqlite_files import lock_held_elsewhere, migration_lock_path, service_lock_path

log = logging.getLogger(__name__)

POSTGRES_LOCK_KEY = 0x616E6962  # "anib": one key for every AniBridge upgrade
POLL_INTERVAL_S = 0.1
ADVISORY_LOCK_HELD = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = 0 AND objid = CAST(:key AS oid) AND objsubid = 1)"
)
SESSION_LOCK = "pg_try_advisory_lock"
XACT_LOCK = "pg_try_advisory_xact_lock"
POSTGRES_LOCK = "the PostgreSQL advisory lock"
LOG_EVERY_S = 10.0
HOLDER_BYTES = 200


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


@contextmanager
def postgres_upgrade_lock(
    connection: Connection, timeout_s: float, statement_bounds: dict[str, str]
) -> Iterator[None]:
    """Hold the advisory lock for the whole run, every statement bounded; nothing on SQLite.

    The bounds (`lock_timeout`, ...) make DDL behind a running service's open
    transaction fail with a clear line instead of queueing forever (and
    blocking every query queued behind it). Both the lock and the bounds belong
    to the session, so they hold in an autocommit block too; the session's own
    values are put back and the lock released at the end. The short transaction
    that took them is committed, so the run's own starts after the lock: its
    first read sees what the previous holder committed.

    Inside a caller's open transaction (joined by the run, and never committed
    by it) the lock and bounds are the transaction's instead, released when the
    caller ends it: a session lock released earlier would let another upgrade
    run before the caller commits.
    """
    if connection.dialect.name != "postgresql":
        yield
        return
    if connection.in_transaction():
        _wait_for(lambda: _try_postgres_lock(connection, XACT_LOCK), timeout_s, POSTGRES_LOCK)
        _set_session_values(connection, statement_bounds, local=True)
        yield
        return
    _wait_for(lambda: _try_postgres_lock(connection, SESSION_LOCK), timeout_s, POSTGRES_LOCK)
    previous = _set_session_values(connection, statement_bounds, local=False)
    connection.commit()
    try:
        yield
    finally:
        _release_postgres_lock(connection, previous)


def _set_session_values(
    connection: Connection, values: dict[str, str], *, local: bool
) -> dict[str, str]:
    """Set each of PostgreSQL's `values` (LOCAL ones end with the transaction); returns the old."""
    previous = {}
    for name, value in values.items():
        previous[name] = connection.execute(
            text("SELECT current_setting(:name)"), {"name": name}
        ).scalar_one()
        connection.execute(
            text("SELECT set_config(:name, :value, :local)"),
            {"name": name, "value": value, "local": local},
        )
    return previous


def _release_postgres_lock(connection: Connection, previous: dict[str, str]) -> None:
    """Put the session's values back and release the lock; a dead connection has done both."""
    if connection.closed or connection.invalidated:
        return
    try:
        if connection.in_transaction():
            connection.rollback()
        _set_session_values(connection, previous, local=False)
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": POSTGRES_LOCK_KEY})
        connection.commit()
    except DBAPIError:
        log.debug("Could not release the PostgreSQL advisory lock", exc_info=True)


def upgrade_running(connection: Connection, url: URL) -> bool:
    """Whether an upgrade holds the lock of the database at `url`, found without waiting.

    SQLite: a shared, non-blocking try on the lock file (a missing file means
    no upgrade ever started). PostgreSQL: the advisory lock in `pg_locks`, read
    on `connection`.
    """
    if url.get_backend_name() == "sqlite":
        return lock_held_elsewhere(migration_lock_path(url.database))
    return bool(connection.execute(ADVISORY_LOCK_HELD, {"key": POSTGRES_LOCK_KEY}).scalar())


@contextmanager
def service_lock(database: Path, timeout_s: float) -> Iterator[None]:
    """Hold the service lock of a SQLite `database` shared while serving from it."""
    fd = _open_lock_file(service_lock_path(database))
    try:
        _wait_for(
            lambda: _try_flock(fd, fcntl.LOCK_SH),
            timeout_s,
            str(service_lock_path(database)),
            waiting_for="a restore of the database to finish",
        )
        yield
    finally:
        os.close(fd)


@contextmanager
def exclusive_database_use(database: Path) -> Iterator[None]:
    """Hold both lock files exclusively, or refuse at once: for replacing the database."""
    fds = []
    try:
        for path, user in (
            (migration_lock_path(database), "an upgrade"),
            (service_lock_path(database), "a running AniBridge service"),
        ):
            fds.append(_open_lock_file(path))
            if not _try_flock(fds[-1], fcntl.LOCK_EX):
                raise DatabaseInUseError(
                    f"{database} is in use by {user}{_holder_note(fds[-1])}; stop it "
                    "(docker compose stop anibridge) and run the command again"
                )
        yield
    finally:
        for fd in fds:
            os.close(fd)


@contextmanager
def _sqlite_file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    fd = _open_lock_file(path)
    try:
        _wait_for(
            lambda: _try_flock(fd, fcntl.LOCK_EX),
            timeout_s,
            str(path),
            holder=lambda: _holder_note(fd),
        )
        _write_holder(fd)
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MigrationError(
            f"cannot open the lock file {path}: {describe_os_error(exc, path.parent)}"
        ) from None


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_holder(fd: int) -> None:
    """Record who holds the lock, when the disk lets us.

    The record only names the holder to waiters; the flock decides. A full
    disk or quota must not stop a run that may need no space at all (a
    database already at head), so a failed write leaves the file empty (a
    short one too, never a fragment), and a run that does need space reports
    the shortage where it writes.
    """
    holder = f"pid {os.getpid()} on host {socket.gethostname()}".encode()
    try:
        os.ftruncate(fd, 0)
        if os.pwrite(fd, holder, 0) != len(holder):
            os.ftruncate(fd, 0)
    except OSError as exc:
        log.debug("Cannot record the lock's holder: %s", exc.strerror)


def _holder_note(fd: int) -> str:
    holder = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace").strip()
    return f" (held by {holder})" if holder else ""


def _try_postgres_lock(connection: Connection, function: str) -> bool:
    """One try; a session-level try ends its transaction, whatever the answer.

    A waiter idle in a transaction would hold up the holder's `CREATE INDEX
    CONCURRENTLY`, which waits for every older transaction to end.
    """
    query = text(f"SELECT {function}(:key)")
    taken = bool(connection.execute(query, {"key": POSTGRES_LOCK_KEY}).scalar())
    if function == SESSION_LOCK:
        connection.commit()
    return taken


def _wait_for(
    try_lock: Callable[[], bool],
    timeout_s: float,
    what: str,
    holder: Callable[[], str] = str,
    waiting_for: str = "another upgrade to finish",
) -> None:
    started = time.monotonic()
    next_log = started
    while not try_lock():
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise MigrationLockTimeoutError(
                f"gave up waiting for {waiting_for} after {timeout_s:.0f} s ({what}"
                f"{holder()}); wait for it or stop it, or raise DB_MIGRATION_LOCK_TIMEOUT"
            )
        if time.monotonic() >= next_log:
            log.info("Waiting for %s (%s%s, %.0f s so far)", waiting_for, what, holder(), waited)
            next_log += LOG_EVERY_S
        time.sleep(POLL_INTERVAL_S)
