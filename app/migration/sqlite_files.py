"""Facts about a SQLite database file, for everything that touches one (standard library only).

The file's header, the URI that opens it read-only, the lock files beside it,
and whether another process holds one of them. The fast at-head check imports
this module without SQLAlchemy, so nothing here may import more than the
standard library.
"""

import fcntl
import os
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"


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

    Probed with a shared, non-blocking `flock`, released at once.
    """
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
