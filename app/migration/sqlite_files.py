"""Facts about a SQLite database file, for everything that touches one (standard library only).

The file's header, the URI that opens it read-only, the lock files beside it,
whether another process holds one of them, and the checks made before SQLite
is asked to open the file: `bad_path_refusal` (no command can use the path),
`reading_refusal` (a command that only reads cannot) and `upgrade_refusal`
(the upgrade cannot write: the one decision the upgrade, `anibridge status`,
`anibridge plan` and the fast at-head check share). The fast at-head check
imports this module without SQLAlchemy, so nothing here may import more than
the standard library.
"""

import fcntl
import os
import stat
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
OWNERSHIP_FIX = "fix its ownership (PUID/PGID) or permissions"
IMMUTABLE_FIX = ", or clear its immutable attribute (chattr -i)"


def bad_path_refusal(database: Path) -> str | None:
    """Why no command can use `database` as a SQLite file, or None (a missing file is fine).

    Its folder is something other than a folder, or it is a dangling symlink, a
    directory, a FIFO or another file that is not a regular one. Decided from
    the file's type alone: opening a FIFO would block.
    """
    folder = database.parent
    if os.path.lexists(folder) and not folder.is_dir():
        return f"the database's folder {folder} is not a folder; set DATA_DIR to a folder"
    try:
        mode = os.stat(database).st_mode
    except FileNotFoundError:
        if os.path.islink(database):
            return (
                f"the database {database} is a symlink to {os.readlink(database)}, which does "
                "not exist; make the symlink point at the database file, or remove it"
            )
        return None
    except OSError as exc:
        return f"cannot use the database {database}: {exc.strerror}"
    if stat.S_ISREG(mode):
        return None
    kind = FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
    hint = " (a bind mount of a missing file makes a directory)" if stat.S_ISDIR(mode) else ""
    return (
        f"the database {database} is {kind}, not a SQLite file{hint}; remove it, or point "
        "DATABASE_URL (or DATA_DIR) at the file"
    )


def reading_refusal(database: Path) -> str | None:
    """Why a command that only reads cannot open `database`, or None (a missing file is fine)."""
    return bad_path_refusal(database) or file_refusal(database, os.R_OK, "readable")


def upgrade_refusal(database: Path) -> str | None:
    """Why the upgrade would refuse `database` before writing anything, or None.

    The upgrade's own check, which `anibridge status` and `anibridge plan` ask
    too, so they predict exactly what it refuses: a bad path, a folder it
    cannot write, a file it cannot read and write (an immutable one included),
    a file that is not SQLite, or an upgrade lock file left by another user.
    A missing folder is left to the upgrade, which creates DATA_DIR.
    """
    folder = database.parent
    refusal = bad_path_refusal(database)
    if refusal is None and folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        refusal = (
            f"the data folder {folder} is not writable by user {os.getuid()}; "
            "fix its ownership (PUID/PGID) or mount it read-write"
        )
    return (
        refusal
        or file_refusal(database, os.R_OK | os.W_OK, "readable and writable")
        or lock_file_refusal(migration_lock_path(database))
    )


def file_refusal(database: Path, access: int, needed: str) -> str | None:
    """An existing `database` this user cannot access as `access` says, or that is not SQLite."""
    if not database.is_file():
        return None
    if not os.access(database, access):
        fix = f"{OWNERSHIP_FIX}{IMMUTABLE_FIX if access & os.W_OK else ''}"
        return f"the database {database} is not {needed} by user {os.getuid()}; {fix}"
    try:
        is_sqlite = is_sqlite_file(database, empty_ok=True)
    except OSError as exc:
        return f"cannot read the database {database}: {exc.strerror}"
    if not is_sqlite:
        return (
            f"{database} is not a SQLite database; restore it from DATA_DIR/backups "
            "or move it away to start afresh"
        )
    return None


def lock_file_refusal(lock_file: Path) -> str | None:
    """An upgrade lock file this user cannot open to take the lock (another user made it)."""
    if os.path.lexists(lock_file) and not os.access(lock_file, os.R_OK | os.W_OK):
        return (
            f"the upgrade lock file {lock_file} is not readable and writable by user "
            f"{os.getuid()}; {OWNERSHIP_FIX}"
        )
    return None


def file_header(path: Path) -> bytes:
    """The first bytes of `path`, as many as a SQLite header has (fewer for a short file)."""
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_HEADER))


def is_sqlite_file(path: Path, *, empty_ok: bool = False) -> bool:
    """Whether `path` starts with SQLite's header; an empty file passes when `empty_ok`.

    Raises OSError when the file cannot be read.
    """
    header = file_header(path)
    return header == SQLITE_HEADER or (empty_ok and header == b"")


def read_only_uri(path: str | Path, *, immutable: bool = False) -> str:
    """The `file:` URI that opens `path` without writing to it (for `sqlite3.connect(uri=True)`).

    `immutable` also tells SQLite that no other process changes the file, so it
    takes no locks at all: only for files nobody else uses, such as backups.
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    return f"{uri}&immutable=1" if immutable else uri


def migration_lock_path(database: str | Path) -> Path:
    """The lock file that serialises upgrades of the SQLite file `database`."""
    return Path(f"{database}.migration-lock")


def service_lock_path(database: str | Path) -> Path:
    """The lock file a running service holds shared on the SQLite file `database`."""
    return Path(f"{database}.service-lock")


def lock_held_elsewhere(lock_file: Path) -> bool:
    """Whether another process holds `lock_file` exclusively (a missing file is not held).

    Probed with a shared, non-blocking `flock`, released at once. A file this
    user cannot open cannot be probed: it is not reported as held (the upgrade
    refuses such a file, see `lock_file_refusal`).
    """
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except (FileNotFoundError, PermissionError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
