"""Snapshots of the SQLite database taken before an upgrade, and their restore.

The snapshot is taken through a separate read-only connection holding a read
lock, while the upgrade already holds the write lock (`BEGIN IMMEDIATE`), so
nothing can change the database while it is copied, in rollback-journal and in
WAL mode alike. It is written under a temporary name, flushed to disk and
renamed when complete, so a kill never leaves a half backup that looks whole.
"""

import logging
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from app.db.errors import BackupError

log = logging.getLogger(__name__)

FREE_SPACE_MARGIN = 1.1
PARTIAL_SUFFIX = ".partial"


def database_size(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


BACKUP_STAMP = "%Y%m%dT%H%M%S%fZ"
UNVERSIONED = "unversioned"


def backup_name(database: Path, revision: str | None, now: datetime) -> str:
    stamp = now.astimezone(UTC).strftime(BACKUP_STAMP)
    return f"{database.stem}-{revision or UNVERSIONED}-{stamp}{database.suffix}"


def read_backup_name(backup: Path, database: Path) -> tuple[str | None, datetime | None]:
    """The revision and time `backup_name` put in the name (None for what it cannot tell)."""
    middle = backup.name[len(database.stem) + 1 : len(backup.name) - len(database.suffix)]
    revision, _, stamp = middle.rpartition("-")
    try:
        created = datetime.strptime(stamp, BACKUP_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None, None
    return (None if revision == UNVERSIONED else revision), created


def backup_database(
    database: Path, backups_dir: Path, revision: str | None, keep: int
) -> Path | None:
    """Snapshot `database` into `backups_dir`, keeping the newest `keep` backups.

    Returns the backup's path, or None when backups are turned off (keep=0).
    """
    if keep == 0:
        return None
    _make_private_dir(backups_dir)
    _remove_partials(backups_dir)
    _require_free_space(database, backups_dir)
    target = backups_dir / backup_name(database, revision, datetime.now(UTC))
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    _copy_consistently(database, partial)
    os.replace(partial, target)
    prune_backups(backups_dir, database, keep)
    log.info("Backed up %s to %s before migrating", database.name, target)
    return target


def _make_private_dir(backups_dir: Path) -> None:
    try:
        backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup folder {backups_dir}: {exc.strerror}"
        ) from None


def _remove_partials(backups_dir: Path) -> None:
    for leftover in backups_dir.glob(f"*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def _require_free_space(database: Path, backups_dir: Path) -> None:
    needed = int(database_size(database) * FREE_SPACE_MARGIN)
    free = shutil.disk_usage(backups_dir).free
    if free < needed:
        raise BackupError(
            f"not enough free space in {backups_dir} for a backup before upgrading "
            f"({free // 2**20} MiB free, {needed // 2**20} MiB needed); free some space "
            "or set DB_BACKUP_KEEP=0 to upgrade without a backup"
        )


def _copy_consistently(database: Path, target: Path) -> None:
    """Copy `database` to `target` (mode 0600) while holding a read lock on it.

    In WAL mode committed pages may still sit in the -wal file, so SQLite's
    backup API copies the logical database. In rollback-journal mode the file
    itself is the database, and a plain byte copy is about three times faster.
    That copy runs in a child process: opening and closing the database file in
    this process would drop the POSIX locks SQLite holds for the upgrade.
    """
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    uri = f"{database.resolve().as_uri()}?mode=ro"
    source = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if source.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            _copy_pages(source, target)
        else:
            subprocess.run(["cp", "--", str(database), str(target)], check=True)
        _fsync(target)
    except (sqlite3.Error, OSError, subprocess.CalledProcessError) as exc:
        target.unlink(missing_ok=True)
        raise BackupError(f"backup of {database} failed: {exc}") from None
    finally:
        source.close()


def _copy_pages(source: sqlite3.Connection, target: Path) -> None:
    destination = sqlite3.connect(target)
    try:
        source.backup(destination, pages=-1)
    finally:
        destination.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_backups(backups_dir: Path, database: Path) -> list[Path]:
    """Backups of `database`, oldest first (their names sort by time)."""
    pattern = f"{database.stem}-*{database.suffix}"
    return sorted(backups_dir.glob(pattern), key=lambda path: path.name.rsplit("-", 1)[-1])


def prune_backups(backups_dir: Path, database: Path, keep: int) -> None:
    for old in list_backups(backups_dir, database)[:-keep]:
        old.unlink(missing_ok=True)


def restore_backup(backup: Path, database: Path) -> Path:
    """Put `backup` in place of `database`; the current file is kept aside.

    Run it with the service stopped. Returns where the replaced file went.
    """
    _require_intact(backup)
    aside = database.with_name(f"{database.name}.before-restore")
    staged = database.with_name(f"{database.name}.restoring")
    shutil.copyfile(backup, staged)
    os.chmod(staged, 0o600)
    if database.exists():
        os.replace(database, aside)
    for companion in ("-wal", "-shm", "-journal"):
        Path(f"{database}{companion}").unlink(missing_ok=True)
    os.replace(staged, database)
    return aside


def _require_intact(backup: Path) -> None:
    try:
        connection = sqlite3.connect(f"{backup.resolve().as_uri()}?mode=ro", uri=True)
        try:
            result = connection.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{backup} is not a readable SQLite backup: {exc}") from None
    if result != "ok":
        raise BackupError(f"{backup} fails SQLite's integrity check: {result}")
