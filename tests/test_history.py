"""The migration history: a row per revision applied, reverted or stamped, and per adoption."""

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from app import app_version
from app.config import Settings
from app.migration.errors import MigrationError
from app.migration.guarded_run import upgrade_database
from app.migration.journal import read_history
from app.migration.revisions import alembic_config, script_directory
from tests.chain import (
    BASELINE,
    CHAIN,
    HEAD,
    InjectedRevision,
    after,
    copy_project,
    plant_revisions,
)


def history_of(settings: Settings) -> list[tuple[str, str]]:
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        rows = read_history(connection)
    engine.dispose()
    return rows


def moves(settings: Settings) -> list[tuple[str, str]]:
    return [(row.revision, row.direction) for row in history_of(settings)]


def upgrades(revisions: Iterable[str]) -> list[tuple[str, str]]:
    return [(revision, "upgrade") for revision in revisions]


def file_sha256(revision: str) -> str:
    path = script_directory().get_revision(revision).path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_each_applied_revision_gets_a_row(settings: Settings) -> None:
    started = datetime.now(UTC)
    upgrade_database(settings)

    rows = history_of(settings)

    assert [(row.revision, row.direction) for row in rows] == upgrades(CHAIN)
    for row in rows:
        applied_at = datetime.fromisoformat(row.applied_at)
        assert applied_at.utcoffset() == timedelta(0)
        assert started - timedelta(seconds=1) <= applied_at <= datetime.now(UTC)
        assert 0 <= row.duration_s < 60
        assert row.app_version == app_version()
        assert row.checksum == file_sha256(row.revision)


def test_history_records_each_move_until_a_downgrade_reaches_base(settings: Settings) -> None:
    config = alembic_config(settings=settings)
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    command.stamp(config, HEAD)
    command.stamp(config, CHAIN[-2])

    assert moves(settings) == [
        *upgrades(CHAIN),
        (HEAD, "downgrade"),
        (HEAD, "stamp"),
        (CHAIN[-2], "stamp"),
    ]


def test_downgrade_to_base_leaves_only_alembic_version(settings: Settings) -> None:
    config = alembic_config(settings=settings)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = sa.create_engine(settings.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()

    command.upgrade(config, "head")
    command.check(config)

    assert moves(settings) == upgrades(CHAIN)


def test_adoption_gets_a_row(tmp_path: Path) -> None:
    from sqlalchemy.engine import URL

    from tests.conftest import settings_for
    from tests.legacy_data import MULTI_SITE, create_legacy_sqlite

    database = tmp_path / "anibridge_jobs.db"
    create_legacy_sqlite(database, MULTI_SITE, rows=20)
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)

    upgrade_database(settings)

    assert moves(settings) == [(BASELINE, "adopt"), *upgrades(after(BASELINE))]


def test_a_failed_run_writes_no_row(settings: Settings, tmp_path: Path) -> None:
    upgrade_database(settings)
    before = history_of(settings)
    project = copy_project(tmp_path / "project")
    body = "    op.execute(sa.text('SELECT 1'))\n    raise RuntimeError('this revision fails')"
    plant_revisions(project, [InjectedRevision("badbadbadbad", "Failing", body)])
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    config.attributes.update(settings=settings, skip_logging_setup=True)

    with pytest.raises((RuntimeError, MigrationError)):
        command.upgrade(config, "head")

    assert history_of(settings) == before
