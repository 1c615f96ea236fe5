"""The SQLite snapshot taken before pending revisions run, and its pruning."""

import re
import shutil
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy.engine import URL

import app.migration.backup
from app.config import Settings
from app.migration.connection import connect_for_migrations
from app.migration.errors import BackupError
from app.migration.guarded_run import upgrade_database
from app.migration.revisions import alembic_config
from tests.chain import BASELINE, HEAD
from tests.conftest import settings_for
from tests.legacy_data import (
    MULTI_SITE,
    dump_sqlite_rows,
    insert_rows,
    legacy_rows,
    sha256_of,
    sqlite_revision,
    sqlite_table_names,
)

ROWS = 40
BACKUP_NAME = re.compile(rf"anibridge_jobs-{BASELINE}-(\d{{8}}T\d{{12}})Z\.db")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "anibridge_jobs.db"


def settings_with(database: Path, **environ: str) -> Settings:
    return settings_for(URL.create("sqlite", database=str(database)), database.parent, **environ)


def backups(database: Path) -> list[Path]:
    folder = database.parent / "backups"
    return sorted(folder.iterdir()) if folder.exists() else []


def add_rows(database: Path, batch: int = 0) -> None:
    connection = sqlite3.connect(database)
    try:
        insert_rows(connection, legacy_rows(MULTI_SITE, ROWS, seed=batch, first=batch * ROWS))
        connection.commit()
    finally:
        connection.close()


def baseline_with_rows(database: Path, **environ: str) -> Settings:
    """A database at the baseline revision holding ROWS rows per table: head is pending."""
    settings = settings_with(database, **environ)
    upgrade_database(settings, BASELINE)
    add_rows(database)
    return settings


def downgrade_to_baseline(settings: Settings) -> None:
    with connect_for_migrations(settings) as connection:
        command.downgrade(alembic_config(connection, settings), BASELINE)


def test_pending_revisions_are_preceded_by_a_private_backup_at_the_old_revision(
    database: Path,
) -> None:
    settings = baseline_with_rows(database)
    rows = dump_sqlite_rows(database)
    started = datetime.now(UTC)

    upgrade_database(settings)

    (backup,) = backups(database)
    stamp = BACKUP_NAME.fullmatch(backup.name).group(1)
    taken = datetime.strptime(stamp, "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    assert started <= taken <= datetime.now(UTC)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert sqlite_revision(backup) == BASELINE
    assert dump_sqlite_rows(backup) == rows
    assert sqlite_revision(database) == HEAD


def test_no_backup_when_already_at_head(database: Path) -> None:
    settings = baseline_with_rows(database)
    upgrade_database(settings)
    taken = backups(database)

    upgrade_database(settings)

    assert backups(database) == taken


@pytest.mark.parametrize("start", ["no file", "empty file"])
def test_no_backup_of_a_new_database(database: Path, start: str) -> None:
    if start == "empty file":
        database.touch()

    upgrade_database(settings_with(database))

    assert sqlite_revision(database) == HEAD
    assert backups(database) == []


def test_only_the_newest_backups_are_kept(database: Path) -> None:
    settings = baseline_with_rows(database, DB_BACKUP_KEEP="2")
    made = []
    for _ in range(3):
        for step in (upgrade_database, downgrade_to_baseline):
            known = set(backups(database))
            step(settings)
            (new,) = set(backups(database)) - known
            made.append(new)

    assert set(backups(database)) == set(made[-2:])


def test_a_downgrade_is_preceded_by_a_backup_holding_what_it_drops(database: Path) -> None:
    settings = baseline_with_rows(database)
    upgrade_database(settings)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO strm_url_mapping (strm_path, resolved_url, resolved_at, slug, season,"
            " episode, language, site) VALUES ('/m/a.strm', 'https://x/y', '2024-01-01 00:00:00',"
            " 'a', 1, 1, 'German Dub', 'aniworld.to')"
        )
    connection.close()
    known = set(backups(database))

    downgrade_to_baseline(settings)

    (backup,) = set(backups(database)) - known
    assert backup.name.startswith(f"anibridge_jobs-{HEAD}-")
    assert sqlite_revision(backup) == HEAD
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT strm_path FROM strm_url_mapping").fetchall() == [("/m/a.strm",)]
    copy.close()
    assert "strm_url_mapping" not in sqlite_table_names(database)


def test_backup_keep_zero_takes_no_backup(database: Path) -> None:
    settings = baseline_with_rows(database, DB_BACKUP_KEEP="0")

    upgrade_database(settings)

    assert sqlite_revision(database) == HEAD
    assert backups(database) == []


def test_backup_of_a_wal_database_holds_the_rows_still_in_the_wal(database: Path) -> None:
    settings = baseline_with_rows(database)
    keeper = sqlite3.connect(database)
    try:
        keeper.execute("PRAGMA journal_mode = WAL")
        keeper.execute("PRAGMA wal_autocheckpoint = 0")
        insert_rows(keeper, legacy_rows(MULTI_SITE, 5, seed=1, first=ROWS))
        keeper.commit()
        assert Path(f"{database}-wal").stat().st_size > 0
        rows = dump_sqlite_rows(database)
        without_wal = database.with_name("main-file-only.db")
        shutil.copyfile(database, without_wal)
        assert dump_sqlite_rows(without_wal) != rows

        upgrade_database(settings)
    finally:
        keeper.close()

    (backup,) = backups(database)
    assert dump_sqlite_rows(backup) == rows


def test_too_little_free_space_stops_the_upgrade_before_any_change(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = baseline_with_rows(database)
    checksum = sha256_of(database)
    monkeypatch.setattr(
        app.migration.backup.shutil,
        "disk_usage",
        lambda _path: shutil._ntuple_diskusage(10**9, 10**9, 0),
    )

    with pytest.raises(BackupError, match="not enough free space") as refusal:
        upgrade_database(settings)

    assert "DB_BACKUP_KEEP=0" in str(refusal.value) and "\n" not in str(refusal.value)
    assert sha256_of(database) == checksum
    assert sqlite_revision(database) == BASELINE


def test_leftover_partial_backup_is_removed_by_the_next_backup(database: Path) -> None:
    settings = baseline_with_rows(database)
    leftover = (
        database.parent / "backups" / f"anibridge_jobs-{BASELINE}-20240101T000000Z.db.partial"
    )
    leftover.parent.mkdir()
    leftover.write_bytes(b"half a backup")

    upgrade_database(settings)

    (backup,) = backups(database)
    assert BACKUP_NAME.fullmatch(backup.name)
