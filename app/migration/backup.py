"""Snapshots of the SQLite database taken before an upgrade (restore: app.migration.restore).

The snapshot is taken through a separate read-only connection holding a read
lock, while the upgrade already holds the write lock (`BEGIN IMMEDIATE`), so
nothing can change the database while it is copied, in rollback-journal and in
WAL mode alike. It is written under a temporary name, flushed to disk and
renamed when complete, so a kill never leaves a half backup that looks whole.
"""

import ctypes
import filecmp
import functools
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from app.migration.errors import BackupError
from app.migration.sqlite_files import read_only_uri

log = logging.getLogger(__name__)

FREE_SPACE_MARGIN = 1.1
PARTIAL_SUFFIX = ".partial"
PR_SET_PDEATHSIG = 1


def database_size(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return database.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


BACKUP_STAMP = "%Y%m%dT%H%M%S%fZ"
"""The UTC time in the names of backups and of databases a restore set aside; sorts by time."""
UNVERSIONED = "unversioned"


def utc_stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime(BACKUP_STAMP)


def backup_name(database: Path, revision: str | None, now: datetime) -> str:
    return f"{database.stem}-{revision or UNVERSIONED}-{utc_stamp(now)}{database.suffix}"


def read_backup_name(backup: Path, database: Path) -> tuple[str | None, datetime | None]:
    """The revision and time `backup_name` put in the name (None for what it cannot tell)."""
    middle = backup.name[len(database.stem) + 1 : len(backup.name) - len(database.suffix)]
    revision, _, stamp = middle.rpartition("-")
    try:
        created = datetime.strptime(stamp, BACKUP_STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None, None
    return (None if revision == UNVERSIONED else revision), created


def backup_database(database: Path, backups_dir: Path, revision: str | None) -> Path:
    """Snapshot `database` into `backups_dir` and return the backup holding its state.

    When a backup of the same revision already holds exactly this state (a
    start that failed and is retried), the new copy is dropped and that one is
    returned: a restart loop adds no backups. Old backups are pruned only after
    a successful migration (`prune_backups`), so a failing start removes none.
    """
    _remove_partials(backups_dir)
    require_free_space(database, backups_dir)
    with _backup_folder(backups_dir):
        target = backups_dir / backup_name(database, revision, datetime.now(UTC))
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        _copy_for_backup(database, partial)
        identical = _identical_backup(partial, backups_dir, database, revision)
        if identical is not None:
            partial.unlink()
            log.info("%s is unchanged since backup %s: no new backup", database.name, identical)
            return identical
        os.replace(partial, target)
    log.info("Backed up %s to %s before migrating", database.name, target)
    return target


def _identical_backup(
    copy: Path, backups_dir: Path, database: Path, revision: str | None
) -> Path | None:
    """The newest earlier backup of `revision` whose bytes equal `copy`, if any."""
    for earlier in reversed(list_backups(backups_dir, database)):
        if read_backup_name(earlier, database)[0] == revision and filecmp.cmp(
            copy, earlier, shallow=False
        ):
            return earlier
    return None


@contextmanager
def _backup_folder(backups_dir: Path) -> Iterator[None]:
    """Make `backups_dir` (private) if missing; a failed first backup removes it again."""
    created = not backups_dir.exists()
    _make_private_dir(backups_dir)
    try:
        yield
    except BaseException:
        if created:
            _remove_if_empty(backups_dir)
        raise


def _make_private_dir(backups_dir: Path) -> None:
    try:
        backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(
            f"cannot create the backup folder {backups_dir}: {exc.strerror}"
        ) from None


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        log.debug("Left the backup folder %s in place", folder)


def _remove_partials(backups_dir: Path) -> None:
    for leftover in backups_dir.glob(f"*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def space_for_copy(database: Path, folder: Path) -> tuple[int, int]:
    """(free bytes, bytes needed) for a copy of `database` in `folder`, which may not exist yet."""
    needed = int(database_size(database) * FREE_SPACE_MARGIN)
    return shutil.disk_usage(_nearest_existing(folder)).free, needed


def space_shortfall(database: Path, folder: Path) -> str | None:
    """`(X free, Y needed)` when a copy of `database` does not fit in `folder`; else None."""
    free, needed = space_for_copy(database, folder)
    if free >= needed:
        return None
    return f"({size_text(free)} free, {size_text(needed)} needed)"


def require_free_space(database: Path, backups_dir: Path) -> None:
    """Refuse before anything is written, the backup folder included, when the copy cannot fit."""
    shortfall = space_shortfall(database, backups_dir)
    if shortfall is not None:
        raise BackupError(
            f"not enough free space in {backups_dir} for a backup before changing the database "
            f"{shortfall}; free space on the disk holding DATA_DIR, or set DB_BACKUP_KEEP=0 to "
            "migrate without a backup"
        )


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def size_text(size: int) -> str:
    """A byte count as people read it: KiB below one MiB, MiB below one GiB, with one decimal."""
    if size < 2**20:
        return f"{-(-size // 2**10)} KiB"
    if size < 2**30:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**30:.1f} GiB"


def _copy_for_backup(database: Path, target: Path) -> None:
    try:
        copy_consistently(database, target)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(
            f"backup of {database} failed, nothing was changed: {exc}; check the backup folder "
            f"{target.parent} (free space on the disk holding DATA_DIR, permissions), or set "
            "DB_BACKUP_KEEP=0 to migrate without a backup"
        ) from None


def copy_consistently(database: Path, target: Path, *, durable: bool = True) -> None:
    """Copy `database` to `target` (mode 0600) while holding a read lock on it.

    A `durable` copy (a backup) is flushed to disk before this returns; a
    scratch copy (`anibridge plan`) need not wait for the disk.

    In WAL mode committed pages may still sit in the -wal file, so SQLite's
    backup API copies the logical database. In rollback-journal mode the file
    itself is the database, and a plain byte copy is about three times faster.
    That copy runs in a child process: opening and closing the database file in
    this process would drop the POSIX locks SQLite holds for the upgrade.
    A failed copy is removed and its `sqlite3.Error` or `OSError` raised.
    """
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    uri = read_only_uri(database)
    source = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if source.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            _copy_pages(source, target)
        else:
            _copy_file_in_child(database, target)
        if durable:
            fsync_file(target)
    except (sqlite3.Error, OSError):
        target.unlink(missing_ok=True)
        raise
    finally:
        source.close()


def _copy_file_in_child(database: Path, target: Path) -> None:
    """`cp` in a child that the kernel kills if this process dies (SIGTERM, SIGKILL).

    Without that, a stopped container start would leave the copier running,
    still writing into the backup folder after the next start has begun.
    """
    result = subprocess.run(
        ["cp", "--", str(database), str(target)],
        preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        complaint = "; ".join(line for line in result.stderr.splitlines() if line.strip())
        raise OSError(complaint or f"cp exited with {result.returncode}")


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: ask for SIGKILL when the parent dies (Linux prctl)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _copy_pages(source: sqlite3.Connection, target: Path) -> None:
    destination = sqlite3.connect(target)
    try:
        source.backup(destination, pages=-1)
    finally:
        destination.close()


def fsync_file(path: Path) -> None:
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
    """Keep the newest `keep` backups; run only once a migration has succeeded."""
    for old in list_backups(backups_dir, database)[:-keep]:
        old.unlink(missing_ok=True)
