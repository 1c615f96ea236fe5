"""`anibridge restore` and `app.migration.restore.restore_backup`: guarded, and nothing is lost."""

import os
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

import app.migration.restore
from app.config import Settings
from app.migration.backup import utc_stamp
from app.migration.errors import BackupError, DatabaseInUseError
from app.migration.guarded_run import upgrade_database
from app.migration.locking import sqlite_upgrade_lock
from app.migration.restore import restore_backup, set_aside
from app.migration.revisions import script_directory
from tests.chain import BASELINE
from tests.conftest import settings_for
from tests.legacy_data import (
    MULTI_SITE,
    RELEASE_FILES,
    REPO_ROOT,
    anibridge,
    command_environment,
    dump_sqlite_rows,
    failure_line,
    insert_rows,
    legacy_rows,
    release_file,
    sha256_of,
    sqlite_revision,
    sqlite_table_names,
)

ROWS = 40
SCRIPT = script_directory()


def add_rows(database: Path, batch: int) -> None:
    with sqlite3.connect(database) as connection:
        insert_rows(connection, legacy_rows(MULTI_SITE, ROWS, seed=batch, first=batch * ROWS))
    connection.close()


def settings_with(database: Path) -> Settings:
    return settings_for(URL.create("sqlite", database=str(database)), database.parent)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "anibridge_jobs.db"


@pytest.fixture
def backup(database: Path) -> Path:
    """The backup taken at the baseline by an upgrade; the database then gained more rows."""
    settings = settings_with(database)
    upgrade_database(settings, BASELINE)
    add_rows(database, 0)
    upgrade_database(settings)
    add_rows(database, 1)
    (taken,) = (database.parent / "backups").iterdir()
    return taken


def set_asides(database: Path) -> list[Path]:
    return sorted(database.parent.glob(f"{database.name}.before-restore-*"))


def assert_restored(database: Path, backup: Path) -> None:
    assert sqlite_revision(database) == BASELINE
    assert "strm_url_mapping" not in sqlite_table_names(database)
    assert dump_sqlite_rows(database) == dump_sqlite_rows(backup)


def test_restore_puts_the_backup_back_and_keeps_the_replaced_database(
    database: Path, backup: Path
) -> None:
    replaced = sha256_of(database)
    Path(f"{database}-shm").write_bytes(b"stale")

    aside = restore_backup(backup, database, SCRIPT)

    assert set_asides(database) == [aside]
    assert sha256_of(aside) == replaced
    assert_restored(database, backup)
    assert not Path(f"{database}-shm").exists()


def test_a_second_restore_never_overwrites_the_first_set_aside_file(
    database: Path, backup: Path
) -> None:
    first_replaced = sha256_of(database)
    first = restore_backup(backup, database, SCRIPT)
    add_rows(database, 2)
    second_replaced = sha256_of(database)

    second = restore_backup(backup, database, SCRIPT)

    assert first != second and set_asides(database) == sorted([first, second])
    assert sha256_of(first) == first_replaced and sha256_of(second) == second_replaced


def test_committed_rows_still_in_the_wal_stay_with_the_set_aside_database(
    database: Path, backup: Path
) -> None:
    """A writer killed in WAL mode leaves committed rows in -wal only: they must move along."""
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA journal_mode = WAL')\n"
            "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
            "c.execute(\"UPDATE job SET message = 'only in the wal'\")\n"
            "os._exit(0)\n",
            str(database),
        ],
        check=True,
    )
    assert writer.returncode == 0 and Path(f"{database}-wal").stat().st_size > 0

    aside = restore_backup(backup, database, SCRIPT)

    assert Path(f"{aside}-wal").exists()
    with sqlite3.connect(aside) as kept:
        messages = {message for (message,) in kept.execute("SELECT message FROM job")}
    kept.close()
    assert messages == {"only in the wal"}
    assert not Path(f"{database}-wal").exists()
    assert_restored(database, backup)


def test_restore_through_a_symlink_replaces_its_target(tmp_path: Path, backup: Path) -> None:
    real = backup.parent.parent / "anibridge_jobs.db"
    link = tmp_path / "link" / "anibridge_jobs.db"
    link.parent.mkdir()
    link.symlink_to(real)

    aside = restore_backup(backup, link, SCRIPT)

    assert link.is_symlink() and link.resolve() == real
    assert aside.parent == real.parent
    assert_restored(real, backup)


def test_the_live_database_is_refused_as_the_source(database: Path, backup: Path) -> None:
    checksum = sha256_of(database)

    with pytest.raises(BackupError, match="is the live database itself"):
        restore_backup(database, database, SCRIPT)

    assert sha256_of(database) == checksum and set_asides(database) == []


def corrupt(backup: Path, how: str) -> None:
    if how == "random bytes":
        backup.write_bytes(bytes(range(256)) * 64)
    elif how == "truncated":
        backup.write_bytes(backup.read_bytes()[: 4096 + 100])
    elif how == "empty":
        backup.write_bytes(b"")
    else:
        with sqlite3.connect(backup) as connection:
            connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        connection.close()


@pytest.mark.parametrize("how", ["random bytes", "truncated", "empty", "unknown revision"])
def test_a_backup_that_fails_verification_replaces_nothing(
    database: Path, backup: Path, how: str
) -> None:
    corrupt(backup, how)
    checksum = sha256_of(database)

    with pytest.raises(BackupError, match="not a readable SQLite|integrity|does not know"):
        restore_backup(backup, database, SCRIPT)

    assert sha256_of(database) == checksum and set_asides(database) == []


def test_restore_is_refused_while_an_upgrade_holds_the_lock(database: Path, backup: Path) -> None:
    checksum = sha256_of(database)
    engine_url = URL.create("sqlite", database=str(database))

    class LockOnly:
        """Enough of a Connection for sqlite_upgrade_lock: a dialect and a URL."""

        class dialect:  # noqa: N801
            name = "sqlite"

        class engine:  # noqa: N801
            url = engine_url

    with (
        sqlite_upgrade_lock(LockOnly(), 5),
        pytest.raises(DatabaseInUseError, match=f"held by pid {os.getpid()}"),
    ):
        restore_backup(backup, database, SCRIPT)

    assert sha256_of(database) == checksum and set_asides(database) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_restore_command_is_refused_while_the_service_runs(database: Path, backup: Path) -> None:
    environ = command_environment(database.parent, HOST="127.0.0.1", PORT=str(free_port()))
    service = subprocess.Popen(
        [sys.executable, "-m", "app.main"],
        cwd=REPO_ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert any("Application startup complete" in line for line in service.stdout)
        checksum = sha256_of(database)
        result = anibridge(["restore", str(backup)], command_environment(database.parent))
    finally:
        service.terminate()
        service.wait(30)

    line = failure_line(result, "anibridge: error:")
    assert "in use by a running AniBridge service" in line and "stop it" in line
    assert sha256_of(database) == checksum and set_asides(database) == []
    assert anibridge(["restore", str(backup)], environ).returncode == 0
    assert_restored(database, backup)


def test_restore_command_refuses_a_corrupt_backup_in_one_line(database: Path, backup: Path) -> None:
    corrupt(backup, "random bytes")
    checksum = sha256_of(database)

    result = anibridge(["restore", str(backup)], command_environment(database.parent))

    line = failure_line(result, "anibridge: error:")
    assert str(backup) in line and "not a readable SQLite backup" in line
    assert sha256_of(database) == checksum and set_asides(database) == []


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_a_database_left_by_a_release_is_accepted_as_a_backup(
    database: Path, backup: Path, name: str
) -> None:
    """Unversioned, but this release adopts it at the next start."""
    legacy = release_file(name)
    checksum = sha256_of(legacy)

    restore_backup(legacy, database, SCRIPT)

    assert sha256_of(database) == checksum
    assert "alembic_version" not in sqlite_table_names(database)


def test_an_unversioned_backup_of_another_schema_is_refused(
    tmp_path: Path, database: Path, backup: Path
) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE job (id INTEGER PRIMARY KEY, title TEXT)")
    connection.close()
    checksum = sha256_of(database)

    with pytest.raises(BackupError, match="cannot be adopted by this release"):
        restore_backup(foreign, database, SCRIPT)

    assert sha256_of(database) == checksum and set_asides(database) == []


FROZEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
FROZEN_ASIDE = f"anibridge_jobs.db.before-restore-{utc_stamp(FROZEN)}"


class FrozenClock(datetime):
    """`datetime` whose `now` is always FROZEN: two restores get the same stamp."""

    @classmethod
    def now(cls, tz=None):
        return FROZEN.astimezone(tz)


def test_two_restores_in_the_same_instant_never_overwrite_a_set_aside_file(
    database: Path, backup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.migration.restore, "datetime", FrozenClock)
    first_replaced = sha256_of(database)
    first = restore_backup(backup, database, SCRIPT)
    add_rows(database, 2)
    second_replaced = sha256_of(database)

    second = restore_backup(backup, database, SCRIPT)

    assert first.name == FROZEN_ASIDE and second.name == f"{FROZEN_ASIDE}-1"
    assert sha256_of(first) == first_replaced and sha256_of(second) == second_replaced
    assert_restored(database, backup)


def write_companions(database: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """Give `database` companion files with recognisable bytes; returns them by suffix."""
    written = {suffix: f"{suffix} of the live database".encode() for suffix in suffixes}
    for suffix, content in written.items():
        Path(f"{database}{suffix}").write_bytes(content)
    return written


@pytest.mark.parametrize("taken", ["", "-wal", "-journal", "-shm"])
@pytest.mark.parametrize("moving", [(), ("-wal",), ("-journal",)], ids=repr)
def test_a_taken_name_of_the_set_is_skipped_and_left_alone(
    database: Path, backup: Path, taken: str, moving: tuple[str, ...]
) -> None:
    """Whichever name of the set exists, of a file moving or not: the next name is used.

    A stranger's `-wal` beside the set-aside database would be read as its WAL.
    """
    replaced = sha256_of(database)
    companions = write_companions(database, moving)
    stranger = database.with_name(f"{FROZEN_ASIDE}{taken}")
    stranger.write_bytes(b"not ours")
    names_before = set(database.parent.iterdir())

    aside = set_aside(database, FROZEN)

    assert aside.name == f"{FROZEN_ASIDE}-1"
    assert stranger.read_bytes() == b"not ours"
    assert sha256_of(aside) == replaced
    for suffix, content in companions.items():
        assert Path(f"{aside}{suffix}").read_bytes() == content
    moved_away = {database, *(Path(f"{database}{suffix}") for suffix in moving)}
    arrived = {aside, *(Path(f"{aside}{suffix}") for suffix in moving)}
    assert set(database.parent.iterdir()) == names_before - moved_away | arrived


def test_no_database_to_set_aside_claims_no_name(tmp_path: Path) -> None:
    assert set_aside(tmp_path / "anibridge_jobs.db", FROZEN) is None
    assert list(tmp_path.iterdir()) == []
