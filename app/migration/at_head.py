"""Answer "is the database already at head?" from the manifest, without Alembic.

`migrations/manifest.txt` names the single head and the SHA-256 of every
revision file, and the test suite fails when it is stale. The check trusts that
head only while the revision files on disk are exactly the ones it lists: the
same names (as Alembic's filter picks them from migrations/versions) and the
same checksums (hashing the files costs well under a millisecond). A revision
file added, removed or edited after the manifest was written, or a manifest
that cannot be read, makes `vouched_head` answer None: nothing is "at head" then,
and `alembic upgrade head` decides.

Two callers:

* `database_at_head` (also `python -m app.migration.at_head`), the container's
  start-up check for SQLite, standard library only. It says "at head" when the
  settings are ones `app.config` accepts, the database is the default file under
  DATA_DIR or a plain `sqlite:///PATH`, that file, its folder and its migration
  lock pass the checks the full path makes, no upgrade holds the lock, the file
  opens read-only with `alembic_version` holding exactly the head and a clean
  `PRAGMA foreign_key_check` (the full path refuses dangling references).
* `at_vouched_head`, for a process that has read the database's revisions
  itself: the service, on PostgreSQL, where a separate process would pay the
  driver's import again (docs/performance.md, "6. Container start at head").

Nothing is cached: every call reads the manifest, the files and the database.
"""

import os
import re
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.config import DATABASE_FILE_NAME, SQLITE_DRIVERS, ConfigError, parse_options
from app.migration.manifest import (
    MIGRATIONS_DIR,
    ManifestError,
    file_checksum,
    manifest_path,
    read_manifest,
)
from app.migration.sqlite_files import (
    lock_held_elsewhere,
    migration_lock_path,
    read_only_uri,
    upgrade_refusal,
)

PLAIN_SQLITE_URL = rf"(?:{'|'.join(map(re.escape, SQLITE_DRIVERS))}):///([^?#%:@]+)"


def vouched_head(migrations_dir: Path = MIGRATIONS_DIR) -> str | None:
    """The manifest's head when migrations/versions holds exactly its files, else None."""
    try:
        manifest = read_manifest(manifest_path(migrations_dir))
        present = revision_files(migrations_dir / "versions")
        listed = {entry.file_name: entry.checksum for entry in manifest.entries.values()}
        unchanged = listed.keys() == present.keys() and all(
            file_checksum(path) == listed[name] for name, path in present.items()
        )
    except (OSError, UnicodeDecodeError, ManifestError):
        return None
    return manifest.head if unchanged and manifest.head in manifest.entries else None


def revision_files(versions_dir: Path) -> dict[str, Path]:
    """The files Alembic loads from a (non-recursive, source-only) version location, by name."""
    with os.scandir(versions_dir) as entries:
        return {
            entry.name: Path(entry.path)
            for entry in entries
            if is_revision_file_name(entry.name) and not entry.is_dir()
        }


def is_revision_file_name(name: str) -> bool:
    """Alembic's filter (a `.py` ending, no `.#` or `__init__` prefix), without a regex."""
    return name.endswith(".py") and not name.startswith((".#", "__init__"))


def at_vouched_head(current: Sequence[str], migrations_dir: Path = MIGRATIONS_DIR) -> bool:
    """Whether a database stamped `current` is at the head the manifest vouches for."""
    head = vouched_head(migrations_dir)
    return head is not None and list(current) == [head]


def database_at_head(
    environ: Mapping[str, str] | None = None, migrations_dir: Path = MIGRATIONS_DIR
) -> str | None:
    """The head revision when the configured SQLite database is certainly at it, else None."""
    env = os.environ if environ is None else environ
    if not settings_acceptable(env):
        return None
    database = sqlite_database_path(env)
    head = vouched_head(migrations_dir)
    if database is None or head is None:
        return None
    return head if stamped_revisions(database) == [head] else None


def settings_acceptable(env: Mapping[str, str]) -> bool:
    try:
        parse_options(env)
    except ConfigError:
        return False
    return True


def sqlite_database_path(env: Mapping[str, str]) -> Path | None:
    """The SQLite file `app.config` would use, if this module can tell it exactly."""
    try:
        data_dir = Path(env.get("DATA_DIR", "./data")).expanduser()
    except RuntimeError:
        return None
    raw_url = env.get("DATABASE_URL", "").strip()
    if not raw_url:
        return data_dir / DATABASE_FILE_NAME
    plain = re.fullmatch(PLAIN_SQLITE_URL, raw_url)
    if plain is None or not data_dir.is_dir():
        return None
    return Path(plain.group(1))


def stamped_revisions(database: Path) -> list[str] | None:
    """The rows of `alembic_version`, read without writing anything; None on any doubt.

    An upgrade that takes the lock after the probe changes nothing this read
    sees until it commits, and then the database is at head.
    """
    if not database_passes_preflight(database) or lock_held_elsewhere(
        migration_lock_path(database)
    ):
        return None
    try:
        connection = sqlite3.connect(read_only_uri(database), uri=True)
        try:
            if connection.execute("PRAGMA foreign_key_check").fetchone() is not None:
                return None
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return None
    return [row[0] for row in rows]


def database_passes_preflight(database: Path) -> bool:
    """The upgrade's own checks pass (`upgrade_refusal`), on a file and lock file that exist."""
    lock = migration_lock_path(database)
    return database.is_file() and lock.is_file() and upgrade_refusal(database) is None


def main() -> int:
    head = database_at_head()
    if head is None:
        return 1
    print(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
