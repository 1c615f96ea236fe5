"""The safe upgrade under faults: kills, concurrent starters, failing revisions, FK rebuilds.

Every upgrade here is a separate `alembic upgrade head` or `python -m app.migrate`
process on a scratch copy of the project with injected revisions (see
tests/faults.py). Trial counts are small by default; raise them for long runs
(docs/testing.md): FAULT_KILL_TRIALS, FAULT_PG_KILL_TRIALS,
FAULT_CONCURRENCY_TRIALS, FAULT_SEED.
"""

import shutil
import sqlite3
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from app.config import sqlite_url as sqlite_url_for
from app.migration.adoption.schema_shape import app_tables, diff_schemas
from app.migration.guarded_run import upgrade_database
from tests.chain import (
    BASELINE,
    CHAIN,
    HEAD,
    InjectedRevision,
    after,
    copy_project,
    plant_revisions,
    project_with,
)
from tests.conftest import postgres_server_url, settings_for
from tests.faults import (
    FAILING,
    FAILING_BODY,
    REPO_ROOT,
    DatabaseState,
    Outcome,
    alembic_versions,
    applied_revisions,
    backups_of,
    connect,
    database_snapshot,
    database_state,
    env_int,
    insert_jobs_postgres,
    insert_jobs_sqlite,
    leftover_partials,
    run_and_kill,
    run_concurrently,
    run_upgrade,
    scratch_postgres_database,
    seeded_random,
    sqlite_dump,
    sqlite_integrity,
    upgrade_environment,
    wait_for_orphans,
)
from tests.revision_data import TABLE_ROWS

KILL_TRIALS = env_int("FAULT_KILL_TRIALS", 6)
POSTGRES_KILL_TRIALS = env_int("FAULT_PG_KILL_TRIALS", 3)
CONCURRENCY_TRIALS = env_int("FAULT_CONCURRENCY_TRIALS", 2)
SQLITE_KILL_ROWS = env_int("FAULT_SQLITE_ROWS", 30_000)
POSTGRES_KILL_ROWS = env_int("FAULT_PG_ROWS", 20_000)
CONCURRENT_UPGRADES = 8
KILL_WINDOW_MARGIN = 1.2
"""Kill delays spread over [0, margin x an uninterrupted upgrade's duration]."""

SLOW_REBUILD = InjectedRevision(
    revision="f1a5c0ffee01",
    message="Rebuild job with a fixture_attempts column (slow on purpose)",
    upgrade="""\
    with op.batch_alter_table("job", recreate="always") as batch_op:
        batch_op.add_column(
            sa.Column("fixture_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.alter_column("message", existing_type=sa.String(), type_=sa.Text())
    op.execute("UPDATE job SET fixture_attempts = CASE WHEN status = 'failed' THEN 1 ELSE 0 END")
""",
)

SUCCEEDING = InjectedRevision(
    revision="900d00000001",
    message="Succeed: add a table, a column and change rows",
    upgrade="""\
    op.create_table("fault_good", sa.Column("id", sa.Integer(), primary_key=True))
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("good_note", sa.String(), nullable=True))
    op.execute("INSERT INTO fault_good (id) VALUES (1)")
    op.execute("UPDATE job SET good_note = 'first revision', message = 'changed'")
""",
)
FAILING_AFTER_SUCCEEDING = InjectedRevision(
    "fa11ed000002",
    "Fail after changing schema and rows",
    FAILING_BODY,
    down_revision=SUCCEEDING.revision,
)

PARENT_AND_CHILD = InjectedRevision(
    revision="fc0000000001",
    message="Parent and child tables, child rows cascade on delete",
    upgrade="""\
    op.create_table(
        "fault_parent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fault_parent")),
    )
    op.create_table(
        "fault_child",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["fault_parent.id"],
            name=op.f("fk_fault_child_parent_id_fault_parent"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fault_child")),
    )
    op.execute("INSERT INTO fault_parent (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    op.execute(
        "INSERT INTO fault_child (id, parent_id) "
        "VALUES (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)"
    )
""",
)
REBUILD_PARENT = InjectedRevision(
    revision="fc0000000002",
    down_revision=PARENT_AND_CHILD.revision,
    message="Rebuild the parent table (batch move-and-copy)",
    upgrade="""\
    with op.batch_alter_table("fault_parent", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(), nullable=True))
""",
)
CHILD_ROWS = 6
HOLD_LOCK = InjectedRevision(
    revision="401d10c00001",
    message="Hold the upgrade lock for a second",
    upgrade="""\
    import time

    time.sleep(1.0)
""",
)
"""Keeps the first upgrader busy while the others start, so they really run concurrently."""


# --- shared set-up ----------------------------------------------------------


@pytest.fixture(scope="session")
def holding_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy whose head revision holds the upgrade lock for a second."""
    project = copy_project(tmp_path_factory.mktemp("holding") / "project")
    plant_revisions(project, [HOLD_LOCK])
    return project


@pytest.fixture(scope="session")
def slow_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch copy whose head is the slow table rebuild."""
    project = copy_project(tmp_path_factory.mktemp("slow") / "project")
    plant_revisions(project, [SLOW_REBUILD])
    return project


def upgrade_to_released_head(url: URL, data_dir: Path) -> None:
    """In-process upgrade to the released head, no backup (nothing to protect yet)."""
    upgrade_database(settings_for(url, data_dir, DB_BACKUP_KEEP="0"))


def fresh_sqlite(folder: Path) -> tuple[Path, URL]:
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "anibridge_jobs.db"
    return database, sqlite_url_for(database)


def describe_mismatch(expected: DatabaseState, actual: DatabaseState) -> str:
    differences = diff_schemas(expected.shape, actual.shape)
    return (
        f"revision {actual.versions}, jobs {actual.jobs} (expected {expected.jobs}), "
        f"schema differences {differences}"
    )


def assert_at_one_known_revision(url: URL, expected: dict[str, DatabaseState]) -> str:
    """The database is wholly at one of the expected revisions; returns which."""
    state = database_state(url)
    assert len(state.versions) == 1 and state.versions[0] in expected, state.versions
    revision = state.versions[0]
    assert state == expected[revision], describe_mismatch(expected[revision], state)
    return revision


def phase_reached(output: str) -> str:
    """How far a killed upgrade got, from its last log line."""
    for marker, phase in (
        ("Applied revision", "revision applied and committed"),
        ("Running upgrade", "inside the revision or its commit"),
        ("Backed up", "backup taken"),
        ("Context impl", "connected, backup not finished"),
    ):
        if marker in output:
            return phase
    return "starting"


class KillReport:
    """Tallies of a kill run: where each database ended and where each kill landed."""

    def __init__(self, label: str, window_s: float) -> None:
        self.label = label
        self.window_s = window_s
        self.started = time.perf_counter()
        self.outcomes: Counter[str] = Counter()
        self.phases: Counter[str] = Counter()

    def record(self, revision: str, killed: Outcome) -> None:
        self.outcomes[revision] += 1
        self.phases[phase_reached(killed.output)] += 1

    def summary(self) -> str:
        trials = sum(self.outcomes.values())
        return (
            f"{self.label}: {trials} kills over [0, {self.window_s:.2f} s], 0 failures, "
            f"{time.perf_counter() - self.started:.1f} s; ended at {dict(self.outcomes)}; "
            f"killed while {dict(self.phases)}"
        )


# --- 1. SIGKILL during an upgrade, SQLite -----------------------------------


@dataclass(frozen=True)
class SqliteKillSetup:
    seed: Path
    expected: dict[str, DatabaseState]
    upgrade_s: float


@pytest.fixture(scope="session")
def sqlite_kill_setup(
    slow_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> SqliteKillSetup:
    """A released-head database full of jobs, and the states a kill may leave it in."""
    seed, seed_url = fresh_sqlite(tmp_path_factory.mktemp("sqlite-seed") / "data")
    upgrade_to_released_head(seed_url, seed.parent)
    insert_jobs_sqlite(seed, SQLITE_KILL_ROWS)
    reference, reference_url = fresh_sqlite(tmp_path_factory.mktemp("sqlite-reference") / "data")
    shutil.copyfile(seed, reference)
    env = upgrade_environment(slow_project, reference_url, reference.parent)
    uninterrupted = run_upgrade(slow_project, env)
    assert uninterrupted.returncode == 0, uninterrupted.output
    expected = {
        HEAD: database_state(seed_url),
        SLOW_REBUILD.revision: database_state(reference_url),
    }
    assert expected[HEAD].jobs == expected[SLOW_REBUILD.revision].jobs
    assert expected[HEAD].shape != expected[SLOW_REBUILD.revision].shape
    return SqliteKillSetup(seed, expected, uninterrupted.seconds)


def assert_backups_whole(database: Path) -> None:
    """Whatever the kill left in backups/, a file named like a backup is a whole database."""
    for backup in backups_of(database):
        assert sqlite_integrity(backup) == "ok", backup
        with connect(sqlite_url_for(backup)) as connection:
            assert alembic_versions(connection) == [HEAD], backup


def sqlite_kill_trial(
    setup: SqliteKillSetup, project: Path, folder: Path, delay_s: float
) -> tuple[str, Outcome]:
    database, url = fresh_sqlite(folder)
    shutil.copyfile(setup.seed, database)
    env = upgrade_environment(project, url, database.parent)
    killed = run_and_kill(project, env, delay_s)
    assert sqlite_integrity(database) == "ok"
    revision = assert_at_one_known_revision(url, setup.expected)
    assert_backups_whole(database)
    rerun = run_upgrade(project, env)
    assert rerun.returncode == 0, rerun.output
    with connect(url) as connection:
        assert alembic_versions(connection) == [SLOW_REBUILD.revision]
    assert not leftover_partials(database.parent / "backups")
    assert_backups_whole(database)
    return revision, killed


@pytest.mark.slow
def test_sigkill_during_sqlite_upgrade_leaves_one_whole_revision(
    sqlite_kill_setup: SqliteKillSetup, slow_project: Path, tmp_path: Path
) -> None:
    """Killed anywhere (start-up, backup, rebuild, commit), the file is at one revision, intact."""
    rng = seeded_random("sqlite kill")
    window = sqlite_kill_setup.upgrade_s * KILL_WINDOW_MARGIN
    report = KillReport("sqlite kill", window)
    for trial in range(KILL_TRIALS):
        delay = rng.uniform(0, window)
        folder = tmp_path / f"trial-{trial}"
        revision, killed = sqlite_kill_trial(sqlite_kill_setup, slow_project, folder, delay)
        report.record(revision, killed)
        shutil.rmtree(folder)
    print(report.summary())


# --- 2. SIGKILL during an upgrade, PostgreSQL -------------------------------


def postgres_kill_trial(
    admin: sa.Engine, seed: URL, project: Path, data_dir: Path, delay_s: float, expected: dict
) -> tuple[str, Outcome]:
    with scratch_postgres_database(admin, postgres_server_url(), seed.database) as url:
        env = upgrade_environment(project, url, data_dir)
        killed = run_and_kill(project, env, delay_s)
        wait_for_orphans(admin, url)
        revision = assert_at_one_known_revision(url, expected)
        rerun = run_upgrade(project, env)
        assert rerun.returncode == 0, rerun.output
        with connect(url) as connection:
            assert alembic_versions(connection) == [SLOW_REBUILD.revision]
    return revision, killed


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkill_during_postgres_upgrade_leaves_one_whole_revision(
    postgres_admin: sa.Engine, postgres_url: URL, slow_project: Path, tmp_path: Path
) -> None:
    upgrade_to_released_head(postgres_url, tmp_path)
    insert_jobs_postgres(postgres_url, POSTGRES_KILL_ROWS)
    expected = {HEAD: database_state(postgres_url)}
    with scratch_postgres_database(
        admin=postgres_admin, server=postgres_server_url(), template=postgres_url.database
    ) as reference:
        uninterrupted = run_upgrade(
            slow_project, upgrade_environment(slow_project, reference, tmp_path)
        )
        assert uninterrupted.returncode == 0, uninterrupted.output
        expected[SLOW_REBUILD.revision] = database_state(reference)
    rng = seeded_random("postgres kill")
    window = uninterrupted.seconds * KILL_WINDOW_MARGIN
    report = KillReport("postgres kill", window)
    for _ in range(POSTGRES_KILL_TRIALS):
        delay = rng.uniform(0, window)
        revision, killed = postgres_kill_trial(
            postgres_admin, postgres_url, slow_project, tmp_path, delay, expected
        )
        report.record(revision, killed)
    print(report.summary())


# --- 3. Concurrent upgrades ---------------------------------------------------


def mixed_entry_points() -> list[str]:
    return ["app.migrate", "alembic"] * (CONCURRENT_UPGRADES // 2)


def assert_exactly_one_upgrader(outcomes: list[Outcome], expected_applied: list[str]) -> int:
    """All succeed, one process ran each revision once, the rest found nothing to do.

    Returns how many of the others logged that they waited for the lock; at
    least one must have, or the processes did not overlap and proved nothing.
    """
    for outcome in outcomes:
        assert outcome.returncode == 0, outcome.output
    assert sorted(applied_revisions(o.output for o in outcomes)) == sorted(expected_applied)
    upgraders = [o for o in outcomes if "Running upgrade" in o.output]
    assert len(upgraders) == 1
    others = [o for o in outcomes if o is not upgraders[0]]
    for outcome in others:
        assert "Database is up to date" in outcome.output, outcome.output
    waited = sum("Waiting for another upgrade" in o.output for o in others)
    assert waited >= 1, "no upgrade waited for the lock: the processes did not overlap"
    return waited


def create_legacy_multi_site(database: Path) -> None:
    ddl = (REPO_ROOT / "tests" / "data" / "legacy_sql" / "multi_site.sql").read_text()
    with closing(sqlite3.connect(database)) as connection:
        connection.executescript(ddl)
    insert_jobs_sqlite(database, 300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("start", "expected_applied"),
    [
        ("empty file", [*CHAIN, HOLD_LOCK.revision]),
        ("legacy multi-site", [*after(BASELINE), HOLD_LOCK.revision]),
    ],
)
def test_concurrent_sqlite_upgrades_apply_each_revision_once(
    start: str, expected_applied: list[str], holding_project: Path, tmp_path: Path
) -> None:
    """Eight starters on one file: one upgrades (adopting a legacy file once), seven wait."""
    for trial in range(CONCURRENCY_TRIALS):
        database, url = fresh_sqlite(tmp_path / f"trial-{trial}")
        legacy = start == "legacy multi-site"
        if legacy:
            create_legacy_multi_site(database)
        else:
            database.touch()
        jobs_before = database_state(url).jobs if legacy else None
        env = upgrade_environment(holding_project, url, database.parent)
        outcomes = run_concurrently(
            holding_project, env, mixed_entry_points(), tmp_path / f"gate-{trial}"
        )
        waited = assert_exactly_one_upgrader(outcomes, expected_applied)
        state = database_state(url)
        assert state.versions == [HOLD_LOCK.revision]
        if legacy:
            assert state.jobs == jobs_before
        adoptions = sum("Adopted an unversioned database" in o.output for o in outcomes)
        assert adoptions == (1 if legacy else 0)
        print(f"sqlite {start}: {waited} of {CONCURRENT_UPGRADES - 1} others waited")


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_postgres_upgrades_apply_each_revision_once(
    postgres_admin: sa.Engine, holding_project: Path, tmp_path: Path
) -> None:
    for trial in range(CONCURRENCY_TRIALS):
        with scratch_postgres_database(postgres_admin, postgres_server_url()) as url:
            env = upgrade_environment(holding_project, url, tmp_path)
            outcomes = run_concurrently(
                holding_project, env, mixed_entry_points(), tmp_path / f"gate-{trial}"
            )
            waited = assert_exactly_one_upgrader(outcomes, [*CHAIN, HOLD_LOCK.revision])
            with connect(url) as connection:
                assert alembic_versions(connection) == [HOLD_LOCK.revision]
        print(f"postgres: {waited} of {CONCURRENT_UPGRADES - 1} others waited")


# --- 4. A failing revision changes nothing ----------------------------------


def fill_released_tables(url: URL) -> None:
    """The tests' rows of each table at head (tests/revision_data.py), and a few hundred jobs."""
    with connect(url) as connection:
        metadata = sa.MetaData()
        for name in sorted(TABLE_ROWS.keys() & set(app_tables(connection))):
            table = sa.Table(name, metadata, autoload_with=connection)
            connection.execute(table.insert(), TABLE_ROWS[name])
        connection.commit()
    if url.get_backend_name() == "sqlite":
        insert_jobs_sqlite(Path(url.database), 300)
    else:
        insert_jobs_postgres(url, 300)


@pytest.mark.parametrize(
    "revisions",
    [[FAILING], [SUCCEEDING, FAILING_AFTER_SUCCEEDING]],
    ids=["fails-alone", "fails-after-a-successful-one"],
)
def test_failing_revision_leaves_database_exactly_as_before(
    revisions: list[InjectedRevision], database_url: URL, tmp_path: Path
) -> None:
    """All or nothing for the whole run: a failure also undoes the revisions before it."""
    data_dir = tmp_path / "data"
    upgrade_to_released_head(database_url, data_dir)
    fill_released_tables(database_url)
    before = database_snapshot(database_url)
    is_sqlite = database_url.get_backend_name() == "sqlite"
    dump_before = sqlite_dump(Path(database_url.database)) if is_sqlite else None
    project = project_with(tmp_path, revisions)
    failed = run_upgrade(project, upgrade_environment(project, database_url, data_dir))
    assert failed.returncode != 0
    assert "injected failure after real DDL and data changes" in failed.output
    assert applied_revisions([failed.output]) == [r.revision for r in revisions]
    assert database_snapshot(database_url) == before
    if is_sqlite:
        assert sqlite_dump(Path(database_url.database)) == dump_before


# --- 5. Foreign keys and batch rebuilds (SQLite) -----------------------------


def child_rows(url: URL) -> int:
    with connect(url) as connection:
        return connection.execute(sa.text("SELECT count(*) FROM fault_child")).scalar_one()


def run_revisions_with_foreign_keys_on(project: Path, url: URL) -> None:
    """Run the injected revisions' own code on a connection with foreign keys ON."""
    script = ScriptDirectory(str(project / "migrations"))
    engine = sa.create_engine(url)
    sa.event.listen(
        engine, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA foreign_keys = ON")
    )
    try:
        with (
            engine.begin() as connection,
            Operations.context(MigrationContext.configure(connection)),
        ):
            for injected in (PARENT_AND_CHILD, REBUILD_PARENT):
                script.get_revision(injected.revision).module.upgrade()
    finally:
        engine.dispose()


def test_batch_rebuild_of_a_parent_table_keeps_cascading_child_rows(tmp_path: Path) -> None:
    project = project_with(tmp_path, [PARENT_AND_CHILD, REBUILD_PARENT])
    database, url = fresh_sqlite(tmp_path / "data")
    upgrade = run_upgrade(project, upgrade_environment(project, url, database.parent))
    assert upgrade.returncode == 0, upgrade.output
    assert child_rows(url) == CHILD_ROWS
    with connect(url) as connection:
        assert connection.execute(sa.text("PRAGMA foreign_key_check")).fetchall() == []

    _, unprotected_url = fresh_sqlite(tmp_path / "foreign-keys-on")
    run_revisions_with_foreign_keys_on(project, unprotected_url)
    assert child_rows(unprotected_url) == 0, "with foreign keys ON the rebuild's DROP cascades"
