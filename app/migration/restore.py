"""`anibridge restore`: put a backup in place of the SQLite database, guarded.

Before anything is moved:

* nothing uses the database: restore takes the upgrade lock and the service's
  lifetime lock exclusively, or refuses (an upgrade or a running service);
* the source is not the live database itself;
* the backup is a whole SQLite database (header, `PRAGMA integrity_check`)
  at a revision this release knows, or an unversioned release it can adopt.

The replaced database is set aside under a name with a timestamp (never one
that exists), together with its `-wal` or `-journal` file: committed rows
still in a WAL, or a killed writer's hot journal, stay with the copy they
belong to. A database path that is a symlink is restored at its target.
"""

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from app.migration.adoption.adopt import recognise_unversioned_database
from app.migration.adoption.schema_shape import app_tables
from app.migration.backup import fsync_file
from app.migration.errors import BackupError, UnknownSchemaError
from app.migration.locking import exclusive_database_use
from app.migration.revisions import current_heads, unknown_revisions
from app.migration.sqlite_files import is_sqlite_file, read_only_uri

SET_ASIDE_COMPANIONS = ("-wal", "-journal")
"""Files that hold part of the set-aside database's content, moved along with it."""
DISCARDED_COMPANIONS = ("-shm",)
"""Rebuilt by SQLite from the -wal file; never part of the content."""


def restore_backup(backup: Path, database: Path, script: ScriptDirectory) -> Path:
    """Put `backup` in place of `database` and return where the replaced database went."""
    target = database.resolve()
    refuse_live_source(backup, target)
    verify_backup(backup, script)
    with exclusive_database_use(database):
        staged = target.with_name(f"{target.name}.restoring")
        shutil.copyfile(backup, staged)
        os.chmod(staged, 0o600)
        fsync_file(staged)
        aside = set_aside(target)
        os.replace(staged, target)
    return aside


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


def set_aside(target: Path) -> Path:
    """Move `target` and its content-bearing companions to a new timestamped name."""
    aside = free_aside_name(target)
    if target.exists():
        os.replace(target, aside)
    for suffix in SET_ASIDE_COMPANIONS:
        companion = Path(f"{target}{suffix}")
        if companion.exists():
            os.replace(companion, Path(f"{aside}{suffix}"))
    for suffix in DISCARDED_COMPANIONS:
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    return aside


def free_aside_name(target: Path) -> Path:
    """`<name>.before-restore-<UTC time>`, with a counter if that name is somehow taken."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    candidate = target.with_name(f"{target.name}.before-restore-{stamp}")
    counter = 1
    while any(Path(f"{candidate}{suffix}").exists() for suffix in ("", *SET_ASIDE_COMPANIONS)):
        candidate = target.with_name(f"{target.name}.before-restore-{stamp}-{counter}")
        counter += 1
    return candidate
