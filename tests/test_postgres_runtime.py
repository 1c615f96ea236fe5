"""PostgreSQL at run time: statements outside a transaction, the whole-run lock, the bounds.

Each test runs revisions written for it in a scratch copy of the project (the
same helpers as tests/test_faults.py), in this process, against an empty
database of the test server.
"""

import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

import app.migration.lock_retry
from app.config import Settings
from app.engine import make_engine
from app.migration.errors import MigrationError
from app.migration.journal import read_history
from app.migration.locking import POSTGRES_LOCK_KEY
from app.migration.revisions import current_heads
from tests.chain import HEAD, InjectedRevision, project_with
from tests.conftest import settings_for
from tests.faults import finish, start_upgrade, upgrade_environment

INDEX_REVISION = "c0cc0c0c0001"
PROBE_TABLE = "autocommit_probe"

CREATE_INDEX_CONCURRENTLY = """\
        op.create_index(
            "ix_job_source_site_created_at",
            "job",
            ["source_site", "created_at"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )"""
CONCURRENT_INDEX = InjectedRevision(
    INDEX_REVISION,
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
{CREATE_INDEX_CONCURRENTLY}
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
    caplog.clear()
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
                "AND objid = CAST(:key AS oid) AND pid = pg_backend_pid()"
            ),
            {"key": POSTGRES_LOCK_KEY},
        ).scalar()
        assert held == 0
    assert versions_and_indexes(postgres_url)[0] == [INDEX_REVISION]


def test_autocommit_block_inside_a_callers_transaction_is_one_line(
    postgres_url: URL, tmp_path: Path
) -> None:
    """Alembic cannot leave a transaction it did not open; the run refuses the block before it
    runs anything, naming outside_transaction() as the fix, instead of Alembic's assertion."""
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
    assert "autocommit_block()" in message and "`with outside_transaction():`" in message
    with plain_connection(postgres_url) as connection:
        probe_table = connection.execute(sa.text(f"SELECT to_regclass('{PROBE_TABLE}')"))
        assert probe_table.scalar() is None


def sqlite_index_revision(after_block: str) -> InjectedRevision:
    """A table before the block, an index inside it (CONCURRENTLY is PostgreSQL's), then more."""
    return InjectedRevision(
        "c0cc0c0c0002",
        "Index jobs by site",
        f"""\
    op.create_table(
        "before_block", sa.Column("id", sa.Integer(), primary_key=True), if_not_exists=True
    )
    with op.get_context().autocommit_block():
{CREATE_INDEX_CONCURRENTLY}
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


ADD_PRIORITY = InjectedRevision(
    "10c4ed000001",
    "Give jobs a priority",
    '    op.add_column("job", sa.Column("fixture_priority", sa.Integer(), nullable=True))',
    '    op.drop_column("job", "fixture_priority")',
)


JOB_READ = "SELECT count(*) FROM job"
"""What a service's transaction does: it then holds ACCESS SHARE on `job` until it ends."""


@contextmanager
def job_table_held(url: URL, statement: str, seconds: float) -> Iterator[None]:
    """Another session's transaction that ran `statement` on `job`, ended after `seconds`."""
    reading = threading.Event()
    done = threading.Event()

    def read_then_wait() -> None:
        with plain_connection(url) as connection, connection.begin():
            connection.execute(sa.text(statement))
            reading.set()
            done.wait(seconds)

    holder = threading.Thread(target=read_then_wait)
    holder.start()
    reading.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()


@pytest.fixture
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.migration.lock_retry, "FIRST_PAUSE_S", 0.2)


def upgraded_to_released_head(url: URL, tmp_path: Path, revisions, **environ: str) -> Config:
    """Config for a scratch copy with `revisions`, the database already at the released head."""
    settings = settings_for(url, tmp_path / "data", **environ)
    config = scratch_config(project_with(tmp_path, revisions), settings)
    command.upgrade(config, HEAD)
    return config


def priority_pending(url: URL, tmp_path: Path, retries: int) -> Config:
    """ADD_PRIORITY pending, each statement waiting up to 1 s for its table locks."""
    return upgraded_to_released_head(
        url,
        tmp_path,
        [ADD_PRIORITY],
        DB_MIGRATION_TABLE_LOCK_TIMEOUT="1",
        DB_MIGRATION_TABLE_LOCK_RETRIES=str(retries),
    )


def test_lock_timeout_is_retried_with_each_wait_logged(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture, short_pauses
) -> None:
    config = priority_pending(postgres_url, tmp_path, retries=5)
    caplog.set_level("INFO")

    with job_table_held(postgres_url, JOB_READ, seconds=2.5):
        command.upgrade(config, "head")

    waits = [r.getMessage() for r in caplog.records if r.name == "app.migration.lock_retry"]
    assert waits, caplog.text
    assert waits[0].startswith(
        "lock_timeout (1 s) waiting for a table lock (ALTER TABLE job ADD COLUMN fixture_priority "
        "INTEGER): retry 1/5 in "
    )
    assert len(waits) < 5
    assert versions_and_indexes(postgres_url)[0] == [ADD_PRIORITY.revision]
    with plain_connection(postgres_url) as connection:
        applied = [row.revision for row in read_history(connection)]
    assert applied.count(ADD_PRIORITY.revision) == 1


def test_lock_timeout_gives_up_after_the_retries_with_one_line(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture, short_pauses
) -> None:
    config = priority_pending(postgres_url, tmp_path, retries=2)
    caplog.set_level("INFO")

    with (
        job_table_held(postgres_url, JOB_READ, seconds=60),
        pytest.raises(MigrationError) as refusal,
    ):
        command.upgrade(config, "head")

    message = str(refusal.value)
    assert "\n" not in message
    assert message.startswith("the migration failed and was rolled back: canceling statement")
    assert message.endswith("(still after 2 retries; DB_MIGRATION_TABLE_LOCK_RETRIES)")
    assert "retry 1/2" in caplog.text and "retry 2/2" in caplog.text
    assert versions_and_indexes(postgres_url)[0] == [HEAD]


def test_statement_timeout_setting_stops_a_long_statement(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slow = InjectedRevision("5105ed000001", "Slow", '    op.execute("SELECT pg_sleep(5)")')
    config = upgraded_to_released_head(
        postgres_url, tmp_path, [slow], DB_MIGRATION_STATEMENT_TIMEOUT="1"
    )
    caplog.set_level("INFO")
    caplog.clear()
    started = time.monotonic()

    with pytest.raises(MigrationError) as refusal:
        command.upgrade(config, "head")

    assert time.monotonic() - started < 4
    assert "canceling statement due to statement timeout" in str(refusal.value)
    assert "retry" not in caplog.text
    assert versions_and_indexes(postgres_url)[0] == [HEAD]


SITES_TABLE = InjectedRevision(
    "5175e5000001",
    "Sites, with a duplicate",
    """\
    op.create_table(
        "site", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("name", sa.String())
    )
    op.execute("INSERT INTO site (id, name) VALUES (1, 'aniworld.to'), (2, 'aniworld.to')")""",
    '    op.drop_table("site")',
)


def unique_site_names(*, concurrently: bool) -> InjectedRevision:
    """A UNIQUE index on site.name: the duplicate left by SITES_TABLE makes it fail."""
    create = f"""\
    op.create_index(
        "uq_site_name", "site", ["name"], unique=True, postgresql_concurrently={concurrently}
    )"""
    if concurrently:
        create = "    with op.get_context().autocommit_block():\n" + textwrap.indent(create, "    ")
    return InjectedRevision(
        "5175e5000002",
        "Unique site names",
        create,
        '    op.drop_index("uq_site_name", table_name="site")',
        down_revision=SITES_TABLE.revision,
    )


def index_validity(url: URL) -> dict[str, bool]:
    with plain_connection(url) as connection:
        rows = connection.execute(
            sa.text(
                "SELECT c.relname, i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'uq_site_name'"
            )
        )
        return dict(rows.all())


def failed_concurrent_build(url: URL, tmp_path: Path) -> Config:
    """A database the unique concurrent build failed on: an invalid index, one duplicate."""
    config = upgraded_to_released_head(
        url, tmp_path, [SITES_TABLE, unique_site_names(concurrently=True)]
    )
    with pytest.raises(MigrationError) as failure:
        command.upgrade(config, "head")
    assert "could not create unique index" in str(failure.value)
    assert "after an autocommit block had committed part of it" in str(failure.value)
    assert versions_and_indexes(url)[0] == [SITES_TABLE.revision]
    assert index_validity(url) == {"uq_site_name": False}
    with plain_connection(url) as connection:
        connection.execute(sa.text("DELETE FROM site WHERE id = 2"))
        connection.commit()
    return config


def test_invalid_index_is_dropped_and_built_again_by_the_next_run(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = failed_concurrent_build(postgres_url, tmp_path)
    caplog.set_level("INFO")

    command.upgrade(config, "head")

    assert index_validity(postgres_url) == {"uq_site_name": True}
    assert versions_and_indexes(postgres_url)[0] == ["5175e5000002"]
    assert "Dropping public.uq_site_name: left invalid by a failed concurrent" in caplog.text


def test_invalid_index_is_dropped_inside_a_callers_transaction(
    postgres_url: URL, tmp_path: Path
) -> None:
    """No autocommit block there: the drop is an ordinary one, committed with the caller's.

    The bounds are the transaction's too (SET LOCAL), gone once the caller ends it.
    """
    config = failed_concurrent_build(postgres_url, tmp_path)
    project = project_with(tmp_path / "plain", [SITES_TABLE, unique_site_names(concurrently=False)])

    settings = config.attributes["settings"]
    with plain_connection(postgres_url) as connection:
        with connection.begin():
            command.upgrade(scratch_config(project, settings, connection), "head")
            assert connection.execute(sa.text("SHOW lock_timeout")).scalar() == "5s"
        assert connection.execute(sa.text("SHOW lock_timeout")).scalar() == "0"

    assert index_validity(postgres_url) == {"uq_site_name": True}
    assert versions_and_indexes(postgres_url)[0] == ["5175e5000002"]


def test_an_index_another_session_is_building_is_left_alone(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Invalid only until its build ends: a concurrent build by hand is no leftover to drop."""
    config = upgraded_to_released_head(
        postgres_url,
        tmp_path,
        [SITES_TABLE],
        DB_MIGRATION_TABLE_LOCK_TIMEOUT="1",
        DB_MIGRATION_TABLE_LOCK_RETRIES="0",
    )

    def build_index_by_hand() -> None:
        with plain_connection(postgres_url) as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(sa.text("CREATE INDEX CONCURRENTLY ix_by_hand ON job (message)"))

    caplog.set_level("INFO")
    caplog.clear()
    builder = threading.Thread(target=build_index_by_hand)
    with job_table_held(postgres_url, "LOCK TABLE job IN ROW EXCLUSIVE MODE", seconds=60):
        builder.start()
        wait_until_building(postgres_url, "ix_by_hand")
        command.upgrade(config, "head")
    builder.join(30)

    assert "Dropping" not in caplog.text
    assert versions_and_indexes(postgres_url)[0] == [SITES_TABLE.revision]
    assert "ix_by_hand" in versions_and_indexes(postgres_url)[1]


def wait_until_building(url: URL, index: str) -> None:
    """Return once another session's concurrent build of `index` has begun (and waits)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_progress_create_index p "
        "JOIN pg_class c ON c.oid = p.index_relid WHERE c.relname = :index"
    )
    with plain_connection(url) as connection:
        for _ in range(200):
            if connection.execute(query, {"index": index}).scalar():
                return
            connection.rollback()
            time.sleep(0.05)
    pytest.fail(f"the build of {index} never began")


def test_autocommit_block_through_a_handed_in_engine(postgres_url: URL, tmp_path: Path) -> None:
    """pytest-alembic's way: an engine handed in, not an open transaction."""
    settings = settings_for(postgres_url, tmp_path / "data")
    project = project_with(tmp_path, [CONCURRENT_INDEX])
    engine = sa.create_engine(postgres_url)
    try:
        command.upgrade(scratch_config(project, settings, engine), "head")
    finally:
        engine.dispose()

    versions, indexes = versions_and_indexes(postgres_url)
    assert versions == [INDEX_REVISION]
    assert "ix_job_source_site_created_at" in indexes


def test_lock_timeout_in_a_callers_transaction_is_not_retried(
    postgres_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture, short_pauses
) -> None:
    config = priority_pending(postgres_url, tmp_path, retries=5)
    caplog.set_level("INFO")
    caplog.clear()

    with (
        job_table_held(postgres_url, JOB_READ, seconds=60),
        plain_connection(postgres_url) as connection,
        connection.begin(),
        pytest.raises(MigrationError) as refusal,
    ):
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    assert "canceling statement due to lock timeout" in str(refusal.value)
    assert "retries" not in str(refusal.value)
    assert "retry" not in caplog.text
