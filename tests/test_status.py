"""`anibridge status`: every state on both engines, read-only, never waiting, passwords masked."""

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL

from app.config import Settings
from app.data.models import metadata
from app.migration.adoption.schema_shape import describe_difference
from app.migration.errors import MigrationError
from app.migration.guarded_run import upgrade_database
from app.migration.journal import history_table
from app.migration.revisions import alembic_config
from app.migration.status import database_status, render
from tests.chain import BASELINE, CHAIN, HEAD, after
from tests.conftest import settings_for
from tests.legacy_data import (
    MULTI_SITE,
    RELEASE_FILES,
    VENV_BIN,
    alembic_upgrade_head,
    command_environment,
    create_legacy_postgres,
    create_legacy_sqlite,
    failure_line,
    release_file,
    run_command,
    sha256_of,
)
from tests.test_read_only_commands import stamp, upgrade_in_progress

KEYS = {"state", "current", "heads", "pending", "backups", "history", "edited", "drift"}
PROMPT_S = 15


def status_json(settings: Settings) -> tuple[dict, float]:
    environ = command_environment(
        settings.data_dir, settings.database_url.render_as_string(hide_password=False)
    )
    started = time.monotonic()
    result = run_command([str(VENV_BIN / "anibridge"), "status", "--json"], environ)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), time.monotonic() - started


def execute(settings: Settings, sql: str) -> None:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(sql))
    engine.dispose()


def test_empty_database(settings: Settings) -> None:
    report, _ = status_json(settings)

    assert KEYS | {"upgrade_running"} <= report.keys()
    assert (report["state"], report["current"], report["heads"]) == ("empty", [], [HEAD])
    assert report["pending"] == list(CHAIN)
    assert (report["history"], report["edited"], report["upgrade_running"]) == ([], [], False)


def test_at_head_then_pending_then_newer(settings: Settings) -> None:
    upgrade_database(settings)
    report, _ = status_json(settings)
    assert (report["state"], report["current"], report["pending"]) == ("at_head", [HEAD], [])
    assert report["drift"] == []
    assert [(row["revision"], row["direction"]) for row in report["history"]] == [
        (revision, "upgrade") for revision in CHAIN
    ]
    assert all(row["applied_at"].endswith("+00:00") for row in report["history"])

    stamp(settings, BASELINE)
    report, _ = status_json(settings)
    assert (report["state"], report["pending"], report["drift"]) == (
        "pending",
        after(BASELINE),
        None,
    )

    stamp(settings, "ffffffffffff")
    report, _ = status_json(settings)
    assert report["state"] == "newer"
    assert "ffffffffffff" in report["message"] and "AniBridge" in report["message"]


def test_unversioned_sqlite_database_is_reported_untouched(tmp_path: Path) -> None:
    database = tmp_path / "anibridge_jobs.db"
    create_legacy_sqlite(database, MULTI_SITE, rows=10)
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    checksum = sha256_of(database)

    report, _ = status_json(settings)

    assert (report["state"], report["pending"]) == ("unversioned", list(CHAIN))
    assert sha256_of(database) == checksum
    assert sorted(path.name for path in tmp_path.iterdir()) == ["anibridge_jobs.db"]


def test_missing_sqlite_file_is_empty_and_not_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = settings_for(URL.create("sqlite", database=str(data_dir / "x.db")), data_dir)
    data_dir.rmdir()

    report, _ = status_json(settings)

    assert report["state"] == "empty"
    assert not data_dir.exists()


def test_status_does_not_wait_for_a_running_upgrade(settings: Settings) -> None:
    upgrade_database(settings)

    with upgrade_in_progress(settings):
        report, seconds = status_json(settings)

    assert report["upgrade_running"] is True
    assert report["state"] == "at_head"
    assert seconds < PROMPT_S


def test_edited_revision_and_drift_are_named(settings: Settings) -> None:
    upgrade_database(settings)
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            history_table.update()
            .where(history_table.c.revision == BASELINE)
            .values(checksum="0" * 64)
        )
        connection.execute(sa.text("ALTER TABLE job ADD COLUMN not_in_the_models VARCHAR"))
    engine.dispose()

    report = database_status(settings, metadata)

    assert report.edited == [BASELINE]
    assert report.drift == ["column job.not_in_the_models is in the database but not in the models"]


def test_backups_are_listed_with_their_revision(tmp_path: Path) -> None:
    database = tmp_path / "anibridge_jobs.db"
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    config = alembic_config(settings=settings)
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    command.upgrade(config, "head")

    backups = database_status(settings).backups

    assert [backup["revision"] for backup in backups] == [HEAD, CHAIN[-2]]
    for backup in backups:
        assert backup["bytes"] == Path(backup["path"]).stat().st_size > 0
        assert backup["created"].endswith("+00:00")
    assert backups[0]["created"] < backups[1]["created"]


def test_password_is_masked(postgres_url: URL, tmp_path: Path) -> None:
    """Trust authentication ignores the password, so the URL works with one in it."""
    url = postgres_url.set(password="s3cret-pw")
    settings = settings_for(url, tmp_path)

    report, _ = status_json(settings)
    environ = command_environment(tmp_path, url.render_as_string(hide_password=False))
    human = run_command([str(VENV_BIN / "anibridge"), "status"], environ)

    assert "s3cret-pw" not in json.dumps(report) + human.stdout + human.stderr
    assert "***" in report["database"] and "***" in human.stdout


def test_human_report_names_state_and_revisions(settings: Settings) -> None:
    upgrade_database(settings)
    environ = command_environment(
        settings.data_dir, settings.database_url.render_as_string(hide_password=False)
    )

    result = run_command([str(VENV_BIN / "anibridge"), "status"], environ)

    assert result.returncode == 0, result.stderr
    assert "state:            at head" in result.stdout
    assert f"current revision: {HEAD}" in result.stdout
    assert "schema drift:     none" in result.stdout


@pytest.mark.parametrize(
    ("sql", "sentence"),
    [
        ("CREATE TABLE stray (id INTEGER PRIMARY KEY)", "table stray is in the database but not"),
        ("DROP INDEX ix_job_status", "index ix_job_status on job (status) is in the models but"),
    ],
)
def test_drift_in_words(settings: Settings, sql: str, sentence: str) -> None:
    upgrade_database(settings)
    execute(settings, sql)

    drift = database_status(settings, metadata).drift

    assert any(line.startswith(sentence) for line in drift), drift


def test_unknown_difference_is_still_shown() -> None:
    assert describe_difference(("something_new", 1)) == "('something_new', 1)"


def test_sqlite_status_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    database = tmp_path / "anibridge_jobs.db"
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    upgrade_database(settings)
    sqlite3.connect(database).close()
    checksum, names = sha256_of(database), sorted(p.name for p in tmp_path.iterdir())

    status_json(settings)

    assert sha256_of(database) == checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_status_on_a_file_an_upgrade_locked_exclusively_fails_fast_in_one_line(
    tmp_path: Path,
) -> None:
    """A rebuild that spills SQLite's cache holds the file exclusively until it commits."""
    database = tmp_path / "anibridge_jobs.db"
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    upgrade_database(settings)
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    environ = command_environment(tmp_path, settings.database_url.render_as_string(False))

    started = time.monotonic()
    result = run_command([str(VENV_BIN / "anibridge"), "status"], environ)
    seconds = time.monotonic() - started
    writer.close()

    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert "database is locked" in line and "try again" in line
    assert seconds < PROMPT_S


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/x",
        "postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:5432/no_such_database_here",
    ],
    ids=["unreachable", "missing-database"],
)
def test_status_that_cannot_connect_says_so_in_one_line(tmp_path: Path, url: str) -> None:
    result = run_command(
        [str(VENV_BIN / "anibridge"), "status", "--json"], command_environment(tmp_path, url)
    )

    assert (result.returncode, result.stdout) == (1, "")
    (line,) = result.stderr.splitlines()
    assert line.startswith("anibridge: error: cannot use the database") and "***" in line
    assert "s3cret-pw" not in line


def test_status_of_a_file_that_is_not_sqlite_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "anibridge_jobs.db").write_text("not a database\n")

    result = run_command([str(VENV_BIN / "anibridge"), "status"], command_environment(tmp_path))

    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "is not a SQLite database" in line


def release_variant(name: str, statement: str | None, database: Path) -> None:
    shutil.copyfile(release_file(name), database)
    if statement is not None:
        with sqlite3.connect(database) as connection:
            connection.execute(statement)
        connection.close()


@pytest.mark.parametrize(
    ("name", "statement"),
    [
        *[(name, None) for name in RELEASE_FILES],
        ("v2.1.0.db", "CREATE INDEX ix_extra ON job (status)"),
        ("v1.16.1.db", "CREATE TABLE notes (id INTEGER PRIMARY KEY)"),
    ],
)
def test_status_reaches_the_verdict_the_upgrade_then_reaches(
    name: str, statement: str | None, tmp_path: Path
) -> None:
    database = tmp_path / "anibridge_jobs.db"
    release_variant(name, statement, database)
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)

    report, _ = status_json(settings)
    upgrade = alembic_upgrade_head(command_environment(tmp_path, f"sqlite:///{database}"))

    if statement is None:
        assert report["state"] == "unversioned" and upgrade.returncode == 0, upgrade.stdout
        assert report["message"].startswith("an upgrade adopts it as the ")
    else:
        assert report["state"] == "refused"
        assert failure_line(upgrade, "FAILED") == f"FAILED: {report['message']}"


def test_status_words_an_adoptable_and_a_refused_database(tmp_path: Path) -> None:
    database = tmp_path / "anibridge_jobs.db"
    release_variant("v1.16.1.db", None, database)
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    assert "an upgrade adopts it as the single-site schema" in render(database_status(settings))

    release_variant("v2.1.0.db", "CREATE INDEX ix_extra ON job (status)", database)
    assert "state:            refused: the database has tables but no migration history" in (
        render(database_status(settings))
    )


def test_postgres_status_recognises_as_the_upgrade_does_and_keeps_nothing(
    postgres_url: URL, tmp_path: Path
) -> None:
    settings = settings_for(postgres_url, tmp_path / "data")
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        create_legacy_postgres(connection, rows=5)
    assert database_status(settings).state == "unversioned"

    execute(settings, "CREATE INDEX ix_extra ON job (status)")
    report = database_status(settings)
    with pytest.raises(MigrationError) as refusal:
        upgrade_database(settings)

    assert report.state == "refused" and report.message == str(refusal.value)
    with engine.connect() as connection:
        schemas = sa.inspect(connection).get_schema_names()
    engine.dispose()
    assert "anibridge_adoption_probe" not in schemas
