"""PostgreSQL at run time: statements outside a transaction, the whole-run lock, the bounds.

Each test runs revisions written for it in a scratch copy of the project (the
same helpers as tests/test_faults.py), in this process, against an empty
database of the test server.
"""

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from app.config import Settings
from app.engine import make_engine
from app.migration.errors import MigrationError
from app.migration.journal import read_history
from app.migration.locking import POSTGRES_LOCK_KEY
from app.migration.revisions import current_heads
from tests.conftest import settings_for
from tests.faults import (
    HEAD,
    InjectedRevision,
    copy_project,
    finish,
    inject_revisions,
    start_upgrade,
    upgrade_environment,
)

INDEX_REVISION = "c0cc0c0c0001"
PROBE_TABLE = "autocommit_probe"

CONCURRENT_INDEX = InjectedRevision(
    INDEX_REVISION,
    HEAD,
    "Index jobs by site concurrently",
    f"""\
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE TABLE {PROBE_TABLE} AS SELECT "
            "current_setting('lock_timeout') AS lock_timeout, "
            "current_setting('statement_timeout') AS statement_timeout, "
            "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = pg_backend_pid()) AS holds_upgrade_lock"
        )
        op.execute("SELECT pg_sleep(1.5)")
        op.create_index(
            "ix_job_source_site_created_at",
            "job",
            ["source_site", "created_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
    op.execute("INSERT INTO {PROBE_TABLE} VALUES ('after', 'the block', true)")""",
    f"""\
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_job_source_site_created_at",
            table_name="job",
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.drop_table("{PROBE_TABLE}")""",
)


def scratch_config(project: Path, settings: Settings, connection=None) -> Config:
    """Alembic's config for the scratch copy, run in this process."""
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    config.attributes.update(settings=settings, skip_logging_setup=True)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def project_with(tmp_path: Path, revisions: list[InjectedRevision]) -> Path:
    project = copy_project(tmp_path / "project")
    inject_revisions(project, revisions)
    return project


@contextmanager
def plain_connection(url: URL) -> Iterator[sa.Connection]:
    """A connection of a plain `create_engine`, as pytest-alembic's documentation builds one."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def versions_and_indexes(url: URL) -> tuple[list[str], list[str]]:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            versions = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            indexes = connection.execute(
                sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'job' ORDER BY 1")
            )
            return [row[0] for row in versions], [row[0] for row in indexes]
    finally:
        engine.dispose()


def probe_rows(url: URL) -> list[tuple]:
    engine = make_engine(url, read_only=True)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(f"TABLE {PROBE_TABLE}"))]
    finally:
        engine.dispose()


def test_concurrent_index_in_autocommit_block_upgrades_and_round_trips(
    postgres_url: URL, tmp_path: Path
) -> None:
    settings = settings_for(
        postgres_url,
        tmp_path / "data",
        DB_MIGRATION_TABLE_LOCK_TIMEOUT="7",
        DB_MIGRATION_STATEMENT_TIMEOUT="90",
    )
    config = scratch_config(project_with(tmp_path, [CONCURRENT_INDEX]), settings)

    command.upgrade(config, "head")

    versions, indexes = versions_and_indexes(postgres_url)
    assert versions == [INDEX_REVISION]
    assert "ix_job_source_site_created_at" in indexes
    assert probe_rows(postgres_url) == [("7s", "90s", True), ("after", "the block", True)]
    command.downgrade(config, HEAD)
    assert versions_and_indexes(postgres_url)[1] == [
        index for index in indexes if index != "ix_job_source_site_created_at"
    ]
    command.upgrade(config, "head")
    assert versions_and_indexes(postgres_url)[0] == [INDEX_REVISION]


def test_second_upgrade_waits_through_the_autocommit_block(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first upgrade's block has committed mid-run; a second still waits for all of it."""
    settings = settings_for(postgres_url, tmp_path / "data")
    project = project_with(tmp_path, [CONCURRENT_INDEX])
    config = scratch_config(project, settings)
    command.upgrade(config, HEAD)
    started = time.perf_counter()
    first = start_upgrade(project, upgrade_environment(project, postgres_url, tmp_path / "data"))
    wait_for_probe_table(postgres_url, first)

    caplog.set_level("INFO")
    command.upgrade(config, "head")
    outcome = finish(first, started)

    assert outcome.returncode == 0, outcome.output
    assert "Waiting for another upgrade to finish" in caplog.text
    assert "Running upgrade" not in caplog.text
    with make_engine(postgres_url).connect() as connection:
        applied = [row.revision for row in read_history(connection) if row.direction == "upgrade"]
    assert applied.count(INDEX_REVISION) == 1


def wait_for_probe_table(url: URL, upgrade: subprocess.Popen) -> None:
    """Return once the upgrade is inside its autocommit block (its probe table is committed)."""
    engine = make_engine(url, read_only=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and upgrade.poll() is None:
            with engine.connect() as connection:
                if sa.inspect(connection).has_table(PROBE_TABLE):
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()
    pytest.fail("the upgrade never reached its autocommit block")


def test_session_values_and_lock_are_put_back_on_a_handed_in_connection(
    postgres_url: URL, tmp_path: Path
) -> None:
    settings = settings_for(postgres_url, tmp_path / "data")
    project = project_with(tmp_path, [CONCURRENT_INDEX])
    with plain_connection(postgres_url) as connection:
        connection.execute(sa.text("SET lock_timeout = '42s'"))
        connection.commit()
        command.upgrade(scratch_config(project, settings, connection), "head")

        assert not connection.in_transaction()
        assert connection.execute(sa.text("SHOW lock_timeout")).scalar() == "42s"
        assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "0"
        held = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid = CAST(:key AS oid)"
            ),
            {"key": POSTGRES_LOCK_KEY},
        ).scalar()
        assert held == 0
    assert versions_and_indexes(postgres_url)[0] == [INDEX_REVISION]


def test_autocommit_block_inside_a_callers_transaction_is_one_line(
    postgres_url: URL, tmp_path: Path
) -> None:
    """Alembic cannot leave a transaction it did not open; the run says so instead of asserting."""
    settings = settings_for(postgres_url, tmp_path / "data")
    project = project_with(tmp_path, [CONCURRENT_INDEX])
    with (
        plain_connection(postgres_url) as connection,
        connection.begin(),
        pytest.raises(MigrationError) as refusal,
    ):
        command.upgrade(scratch_config(project, settings, connection), "head")

    message = str(refusal.value)
    assert "\n" not in message
    assert "autocommit_block" in message and "outside a transaction" in message


def sqlite_index_revision(after_block: str) -> InjectedRevision:
    """A table before the block, an index inside it (CONCURRENTLY is PostgreSQL's), then more."""
    return InjectedRevision(
        "c0cc0c0c0002",
        HEAD,
        "Index jobs by site",
        f"""\
    op.create_table(
        "before_block", sa.Column("id", sa.Integer(), primary_key=True), if_not_exists=True
    )
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_job_source_site_created_at",
            "job",
            ["source_site", "created_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )
{after_block}""",
    )


def sqlite_schema_names(url: URL) -> set[str]:
    with plain_connection(url) as connection:
        rows = connection.execute(sa.text("SELECT name FROM sqlite_master"))
        return {row[0] for row in rows}


def test_autocommit_block_on_sqlite_runs_as_alembic_defines_it(
    sqlite_url: URL, tmp_path: Path
) -> None:
    """What comes before the block is committed; a failure after it rolls back the rest only.

    The rerun therefore meets the committed statements again: written idempotent
    (IF NOT EXISTS), the revision then completes.
    """
    settings = settings_for(sqlite_url, tmp_path / "data")
    failing = sqlite_index_revision(
        '    op.create_table("after_block", sa.Column("id", sa.Integer(), primary_key=True))\n'
        '    raise RuntimeError("fails after the block")'
    )
    with pytest.raises(MigrationError, match="fails after the block"):
        command.upgrade(scratch_config(project_with(tmp_path / "a", [failing]), settings), "head")

    names = sqlite_schema_names(sqlite_url)
    assert {"before_block", "ix_job_source_site_created_at"} <= names
    assert "after_block" not in names
    with plain_connection(sqlite_url) as connection:
        assert current_heads(connection) == (HEAD,)

    passing = sqlite_index_revision('    op.drop_table("before_block")')
    command.upgrade(scratch_config(project_with(tmp_path / "b", [passing]), settings), "head")
    with plain_connection(sqlite_url) as connection:
        assert current_heads(connection) == ("c0cc0c0c0002",)
        assert [row.revision for row in read_history(connection)][-1] == "c0cc0c0c0002"
    assert "ix_job_source_site_created_at" in sqlite_schema_names(sqlite_url)
