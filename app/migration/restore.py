"""`anibridge restore`: put a backup in place of the SQLite database, guarded.

Before anything is moved:

* nothing uses the database: restore takes the upgrade lock and the service's
  lifetime lock exclusively, or refuses (an upgrade or a running service);
* the source is not the live database itself;
* the backup is a whole SQLite database (header, `PRAGMA integrity_check`)
  at a revision this release knows, or an unversioned release it can adopt.

The backup is first copied beside the database under a temporary name and
flushed; a copy that fails (a full disk) is removed, and nothing else changed.
The replaced database is then set aside under a name with a timestamp,
together with its `-wal` or `-journal` file: committed rows still in a WAL, or
a killed writer's hot journal, stay with the copy they belong to. Each name
of the set is claimed with O_EXCL before anything moves, so no existing file
is ever overwritten. The restored file keeps the replaced one's owner and
mode. A database path that is a symlink is restored at its target; one no
command can use (a directory, a FIFO, a dangling symlink) is refused first.
"""

import itertools
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from app.migration.adoption.adopt import recognise_unversioned_database
from app.migration.adoption.schema_shape import app_tables
from app.migration.backup import fsync_file, utc_stamp
from app.migration.errors import BackupError, UnknownSchemaError, describe_os_error
from app.migration.locking import exclusive_database_use
from app.migration.revisions import current_heads, unknown_revisions
from app.migration.sqlite_files import bad_path_refusal, is_sqlite_file, read_only_uri

log = logging.getLogger(__name__)

SET_ASIDE_COMPANIONS = ("-wal", "-journal")
"""Files that hold part of the set-aside database's content, moved along with it."""
DISCARDED_COMPANIONS = ("-shm",)
"""Rebuilt by SQLite from the -wal file; never part of the content."""
STAGED_SUFFIX = ".restoring"
ASIDE_INFIX = ".before-restore-"
SQLITE_NEW_FILE_MODE = 0o644
"""SQLite's default mode for a database file it creates, before the umask."""


def restore_backup(backup: Path, database: Path, script: ScriptDirectory) -> Path | None:
    """Put `backup` in place of `database`; return where the replaced database went (if any)."""
    refusal = bad_path_refusal(database)
    if refusal is not None:
        raise BackupError(f"{refusal}; nothing was restored")
    target = database.resolve()
    refuse_live_source(backup, target)
    verify_backup(backup, script)
    with exclusive_database_use(database):
        staged = stage_copy(backup, target)
        try:
            aside = set_aside(target, datetime.now(UTC))
        except OSError as exc:
            discard(staged)
            raise unchanged_error("set the database aside", exc, target.parent) from None
        os.replace(staged, target)
    return aside


def stage_copy(backup: Path, target: Path) -> Path:
    """Copy `backup` beside `target` under a temporary name, flushed; a failed copy is removed.

    The copy takes the live file's owner and mode (the backup's are the
    backups folder's business), or without a live file the mode SQLite gives a
    database it creates.
    """
    staged = target.with_name(f"{target.name}{STAGED_SUFFIX}")
    try:
        live = target.stat() if target.exists() else None
        shutil.copyfile(backup, staged)
        take_owner_and_mode(staged, live)
        fsync_file(staged)
    except OSError as exc:
        discard(staged)
        raise unchanged_error(f"copy {backup} to {staged}", exc, target.parent) from None
    return staged


def take_owner_and_mode(staged: Path, live: os.stat_result | None) -> None:
    if live is None:
        os.chmod(staged, SQLITE_NEW_FILE_MODE & ~current_umask())
        return
    os.chmod(staged, stat.S_IMODE(live.st_mode))
    made = staged.stat()
    if (made.st_uid, made.st_gid) != (live.st_uid, live.st_gid):
        os.chown(staged, live.st_uid, live.st_gid)


def current_umask() -> int:
    """The process's umask (read by setting it, as the standard library offers no getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def unchanged_error(action: str, exc: OSError, folder: Path) -> BackupError:
    return BackupError(
        f"cannot {action}, the database was not changed: {describe_os_error(exc, folder)}"
    )


def discard(path: Path) -> None:
    """Remove a file this restore made; one that cannot go is logged, not raised over the cause."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("Could not remove %s: %s", path, exc.strerror)


def refuse_live_source(backup: Path, target: Path) -> None:
    source = backup.resolve()
    live = {target, *(Path(f"{target}{suffix}") for suffix in ("-wal", "-journal", "-shm"))}
    if source in live:
        raise BackupError(
            f"{backup} is the live database itself; name a file from DATA_DIR/backups"
        )


def verify_backup(backup: Path, script: ScriptDirectory) -> None:
    """Refuse a backup that is not whole or that this release could not start from."""
    try:
        readable = is_sqlite_file(backup)
    except OSError as exc:
        raise BackupError(f"cannot read the backup {backup}: {exc.strerror}") from None
    if not readable:
        raise BackupError(f"{backup} is not a readable SQLite backup: no SQLite header")
    with opened_read_only(backup) as connection:
        require_intact(backup, connection)
        require_known_revision(backup, connection, script)


@contextmanager
def opened_read_only(backup: Path) -> Iterator[sa.Connection]:
    uri = read_only_uri(backup, immutable=True)
    engine = sa.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=sa.pool.NullPool
    )
    try:
        with engine.connect() as connection:
            yield connection
    except sa.exc.DBAPIError as exc:
        raise BackupError(f"{backup} is not a readable SQLite backup: {exc.orig}") from None
    finally:
        engine.dispose()


def require_intact(backup: Path, connection: sa.Connection) -> None:
    result = connection.exec_driver_sql("PRAGMA integrity_check").scalar()
    if result != "ok":
        raise BackupError(f"{backup} fails SQLite's integrity check: {result}")


def require_known_revision(
    backup: Path, connection: sa.Connection, script: ScriptDirectory
) -> None:
    tables = app_tables(connection)
    if "alembic_version" in sa.inspect(connection).get_table_names():
        unknown = unknown_revisions(script, current_heads(connection))
        if unknown:
            raise BackupError(
                f"{backup} is at revision {', '.join(unknown)}, which this release does not "
                "know; restore it with the release that made it, or pick an older backup"
            )
        return
    if not tables:
        raise BackupError(f"{backup} holds no AniBridge tables; pick another backup")
    try:
        recognise_unversioned_database(connection, script)
    except UnknownSchemaError as exc:
        raise BackupError(f"{backup} cannot be adopted by this release: {exc}") from None


def set_aside(target: Path, now: datetime) -> Path | None:
    """Move `target` and its content-bearing companions to a new name stamped with `now`.

    Returns that name, or None when there was no database to set aside.
    """
    moving = [
        suffix for suffix in ("", *SET_ASIDE_COMPANIONS) if Path(f"{target}{suffix}").exists()
    ]
    aside = claim_aside_name(target, now, moving) if moving else None
    for suffix in moving:
        os.replace(f"{target}{suffix}", f"{aside}{suffix}")
    for suffix in DISCARDED_COMPANIONS:
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    return aside


def claim_aside_name(target: Path, now: datetime, suffixes: list[str]) -> Path:
    """`<name>.before-restore-<UTC time>`, or with `-1`, `-2`... when a file of that set exists.

    The files about to move claim their names (empty, O_EXCL), so what they
    replace is always their own claim; the other names of the set must be
    free too, or SQLite would pair the set-aside database with a stranger's
    `-wal` or `-journal`.
    """
    names = aside_names(target, utc_stamp(now))
    return next(name for name in names if claimed(name, suffixes))


def aside_names(target: Path, stamp: str) -> Iterator[Path]:
    first = target.with_name(f"{target.name}{ASIDE_INFIX}{stamp}")
    yield first
    for counter in itertools.count(1):
        yield first.with_name(f"{first.name}-{counter}")


def claimed(candidate: Path, suffixes: list[str]) -> bool:
    """Whether every name of `candidate`'s set was free and those for `suffixes` are now ours."""
    every = ("", *SET_ASIDE_COMPANIONS, *DISCARDED_COMPANIONS)
    if any(Path(f"{candidate}{suffix}").exists() for suffix in every if suffix not in suffixes):
        return False
    made: list[Path] = []
    try:
        for suffix in suffixes:
            path = Path(f"{candidate}{suffix}")
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            made.append(path)
    except OSError as exc:
        for path in made:
            discard(path)
        if isinstance(exc, FileExistsError):
            return False
        raise
    return True
