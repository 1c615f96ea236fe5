"""Errors an operator can act on, and the one line that explains a database failure.

They subclass Alembic's `CommandError`, so the plain `alembic` command line
prints them as one `FAILED: ...` line and exits non-zero (255) instead of
showing a traceback; `anibridge` and `python -m app.migrate` exit 1.
"""

import errno
import os
import sqlite3
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError


class MigrationError(CommandError):
    """The database cannot be migrated as it is; the message says what to do."""


class DatabaseNewerThanCodeError(MigrationError):
    pass


class UnknownSchemaError(MigrationError):
    pass


class SeveralHeadsError(MigrationError):
    """The revision files end in more than one head: no command can tell which to upgrade to."""


class RevisionFileError(MigrationError):
    """A revision file cannot be loaded (a syntax error, a failing import): the message names it."""


class MigrationLockTimeoutError(MigrationError):
    pass


class TableLockTimeoutError(MigrationError):
    """A statement of the run waited its `lock_timeout` out; the run was rolled back and may
    be tried again (app.migration.lock_retry)."""

    def __init__(self, message: str, statement: str = "") -> None:
        super().__init__(message)
        self.statement = statement


class BackupError(MigrationError):
    pass


class DatabaseUnavailableError(MigrationError):
    pass


class DatabaseInUseError(MigrationError):
    pass


# What to do about a failure, by PostgreSQL SQLSTATE (the server's words come first).
POSTGRES_FIXES = {
    "42501": "grant the role what it lacks (for example `GRANT CREATE ON SCHEMA public TO {user}`)"
    " or set DATABASE_URL to the database owner's role",
    "3F000": "no schema on the role's search_path exists or is usable by {user}: create one"
    " (`CREATE SCHEMA ... AUTHORIZATION {user}`), grant USAGE and CREATE on it, or fix"
    " search_path (`ALTER ROLE {user} SET search_path = ...`)",
    "55P03": "another session holds a lock on a table the migration changes: stop the service"
    " (or the long transaction) using the database and start again",
    "53100": "the database server's disk is full: free space on it and start again",
    "53200": "the database server ran out of memory: retry, or raise its memory",
}

STATEMENT_SHOWN = 80

DISK_FULL_FIX = (
    "the disk holding the database is full: free space on it (or move DATA_DIR) and start again"
)

# What to do about a failure, by SQLite's extended error name, where its message is vaguer.
SQLITE_NAMED_FIXES = {
    # "disk I/O error" while growing the -shm file of a WAL database that has none yet
    "SQLITE_IOERR_SHMSIZE": DISK_FULL_FIX,
}

# What to do about a failure, by words in SQLite's (or the OS's) message.
SQLITE_FIXES = (
    (("database or disk is full", "no space left on device"), DISK_FULL_FIX),
    (
        ("database is locked", "database table is locked"),
        "another process holds the database's lock (an upgrade, a running AniBridge, a"
        " sqlite3 shell, a backup tool): try again when it has finished, or stop it",
    ),
    (
        ("readonly database", "unable to open database file", "permission denied"),
        "the database or its folder is not writable by user {uid}: fix its ownership"
        " (PUID/PGID) or permissions, or mount it read-write",
    ),
    (
        ("disk i/o error",),
        "the disk or volume failed while writing: check it (`dmesg`) and start again",
    ),
    (
        ("file is not a database", "database disk image is malformed"),
        "the database file is damaged: restore one from DATA_DIR/backups with `anibridge restore`",
    ),
)


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def describe_os_error(exc: OSError, folder: Path) -> str:
    """`reason; fix` in one line, for a file in `folder` the system refused to write."""
    reason = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return f"{reason}; free space on the disk holding {folder} (DATA_DIR) and try again"
    if exc.errno in NOT_WRITABLE:
        return (
            f"{reason}; make {folder} writable by user {os.getuid()}: fix its ownership "
            "(PUID/PGID) or permissions, or mount it read-write"
        )
    return reason


def driver_error(exc: DBAPIError | sqlite3.Error) -> BaseException:
    """The driver's own exception (a raw sqlite3 one comes from the driver connection)."""
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def database_reason(exc: DBAPIError | sqlite3.Error, url: URL | None) -> str:
    """The driver's first line, with the URL's password (if any) masked."""
    reason = (str(driver_error(exc)).strip().splitlines() or [type(exc).__name__])[0]
    if url is not None and url.password:
        reason = reason.replace(str(url.password), "***")
    return reason


def database_fix(exc: DBAPIError | sqlite3.Error, url: URL | None) -> str | None:
    """How to fix a failure an operator can cause, when it is one we know."""
    user = (url.username if url is not None else None) or "the_role"
    sqlstate = getattr(driver_error(exc), "sqlstate", None)
    if sqlstate in POSTGRES_FIXES:
        return POSTGRES_FIXES[sqlstate].format(user=user)
    error_name = getattr(driver_error(exc), "sqlite_errorname", None)
    if error_name in SQLITE_NAMED_FIXES:
        return SQLITE_NAMED_FIXES[error_name]
    reason = str(driver_error(exc)).lower()
    for words, fix in SQLITE_FIXES:
        if any(word in reason for word in words):
            return fix.format(uid=os.getuid())
    return None


def is_lock_timeout(exc: DBAPIError | sqlite3.Error) -> bool:
    """PostgreSQL's `lock_timeout` ran out (SQLSTATE 55P03)."""
    return getattr(driver_error(exc), "sqlstate", None) == "55P03"


AUTOCOMMIT_IN_CALLER_TRANSACTION = (
    "a revision calls op.get_context().autocommit_block(), which cannot commit the transaction "
    "the caller handed in; write the block as `with outside_transaction():` "
    "(app.migration.patterns), which runs it in that transaction there (the caller's "
    "transaction was not committed)"
)


def statement_summary(statement: str | None) -> str:
    """A failed statement on one line, short enough for a log line."""
    line = " ".join((statement or "").split())
    return line if len(line) <= STATEMENT_SHOWN else f"{line[: STATEMENT_SHOWN - 3]}..."


def describe_database_error(exc: DBAPIError | sqlite3.Error, url: URL | None) -> str:
    """`reason; fix` in one line, for the messages of MigrationError and its kin."""
    reason = database_reason(exc, url)
    fix = database_fix(exc, url)
    return f"{reason}; {fix}" if fix else reason
