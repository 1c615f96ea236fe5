"""Adoption of databases made before migrations: rows kept, unknown schemas refused untouched.

The ground truth are the files the real releases left (tests/data/releases/,
with the row checksums of their README). Each upgrade runs through the
`alembic upgrade head` command line, `python -m app.migrate` (as a container
does) and in-process through `upgrade_database` (as start-up does). Generated
files (tests/legacy_data.py) add volume and variety: LEGACY_ROWS (default 3000
per table) can be raised for long runs.
"""

import logging
import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import app.migration.adoption.adopt
from app.engine import make_engine
from app.migration.adoption.adopt import (
    RELEASED_SCHEMAS,
    KnownSchema,
    released_sqlite_schema,
    sqlite_definitions,
)
from app.migration.adoption.schema_shape import TableShape, describe_schema
from app.migration.errors import MigrationError, UnknownSchemaError
from app.migration.guarded_run import upgrade_database
from app.migration.revisions import current_heads
from tests.chain import (
    BASELINE,
    HEAD,
    InjectedRevision,
    copy_project,
    plant_revisions,
    running_upgrade_lines,
)
from tests.conftest import settings_for
from tests.faults import (
    env_int,
    run_and_kill,
    run_concurrently,
    run_upgrade,
    seeded_random,
    sqlite_integrity,
    upgrade_environment,
)
from tests.legacy_data import (
    JOB_STATUSES,
    LANGUAGES,
    LEGACY_SITE,
    LEGACY_TABLES,
    MULTI_SITE,
    RELEASE_CHECKSUMS,
    RELEASE_FILES,
    REPO_ROOT,
    SINGLE_SITE,
    SITE_COLUMNS,
    SITES,
    TASK_STATES,
    USER_ADDITIONS,
    VENV_BIN,
    add_to_release_file,
    alembic_upgrade_head,
    analysed_tables,
    assert_triggers_fire,
    command_environment,
    create_legacy_postgres,
    create_legacy_sqlite,
    dump_rows,
    dump_sqlite_rows,
    failure_line,
    in_columns_of,
    insert_rows,
    leave_in_write_ahead_log,
    legacy_rows,
    legacy_sql,
    python_migrate,
    release_file,
    release_row_checksums,
    released_columns,
    run_command,
    sha256_of,
    sqlite_file_engine,
    sqlite_revision,
    sqlite_table_names,
    user_objects,
    user_objects_expected,
    view_counts,
    with_legacy_site,
)
from tests.test_faults import KILL_WINDOW_MARGIN

LEGACY_ROWS = int(os.environ.get("LEGACY_ROWS", "3000"))
ADOPTED_LOG = f"Adopted an unversioned database as baseline revision {BASELINE}"
UPGRADED_LOGS = running_upgrade_lines(BASELINE)
LATER_REBUILD = "a1b2c3d4e5f6"

Upgrader = Callable[[Path], str]


@pytest.fixture(params=["alembic_cli", "python_migrate", "in_process"])
def upgrade(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Upgrader:
    """Upgrade the SQLite file at DATA_DIR/anibridge_jobs.db to head; return the log text."""

    def through(command: Callable) -> Upgrader:
        def run(data_dir: Path) -> str:
            result = command(command_environment(data_dir))
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout + result.stderr

        return run

    def in_process(data_dir: Path) -> str:
        caplog.set_level(logging.INFO)
        upgrade_database(settings_for(sqlite_url(data_dir), data_dir))
        return caplog.text

    upgraders = {
        "alembic_cli": through(alembic_upgrade_head),
        "python_migrate": through(python_migrate),
        "in_process": in_process,
    }
    return upgraders[request.param]


def sqlite_url(data_dir: Path) -> URL:
    return URL.create("sqlite", database=str(data_dir / "anibridge_jobs.db"))


@pytest.fixture(scope="module")
def head_shape(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TableShape]:
    """The schema of a fresh database upgraded to head."""
    data_dir = tmp_path_factory.mktemp("fresh")
    upgrade_database(settings_for(sqlite_url(data_dir), data_dir))
    return sqlite_schema(data_dir / "anibridge_jobs.db")


@pytest.fixture(scope="module")
def head_definitions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """How an adopted release file's tables and indexes are defined at head.

    As a multi-site file's, adopted and upgraded: the release's own definitions
    (not the baseline's, which names its primary keys), as the revisions after
    the baseline changed them.
    """
    data_dir = tmp_path_factory.mktemp("multi-site")
    create_legacy_sqlite(data_dir / "anibridge_jobs.db", MULTI_SITE, rows=1)
    upgrade_database(settings_for(sqlite_url(data_dir), data_dir))
    return table_definitions(data_dir / "anibridge_jobs.db")


@dataclass(frozen=True)
class LegacyFile:
    path: Path
    rows: dict[str, list[tuple]]

    def copy_into(self, data_dir: Path) -> Path:
        return Path(shutil.copyfile(self.path, data_dir / "anibridge_jobs.db"))


@pytest.fixture(scope="module")
def legacy_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LegacyFile]:
    """One filled legacy file per variant, made once; tests work on copies."""
    templates = {}
    for variant in (MULTI_SITE, SINGLE_SITE):
        path = tmp_path_factory.mktemp(variant) / "anibridge_jobs.db"
        create_legacy_sqlite(path, variant, LEGACY_ROWS)
        templates[variant] = LegacyFile(path, dump_sqlite_rows(path))
    return templates


def sqlite_schema(path: Path) -> dict[str, TableShape]:
    engine = sqlite_file_engine(path)
    try:
        with engine.connect() as connection:
            return describe_schema(connection)
    finally:
        engine.dispose()


def sqlite_indexes(path: Path, table: str) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[1] for row in connection.execute(f"PRAGMA index_list({table})")}
    finally:
        connection.close()


def copy_release(name: str, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    database = Path(shutil.copyfile(release_file(name), data_dir / "anibridge_jobs.db"))
    database.chmod(0o644)
    return database


def released_schema_of(name: str) -> KnownSchema:
    """The schema adoption knows for a release file (v2.1.0.db: v2.1.0.schema.sql)."""
    schema_file = name.removesuffix(".db") + ".schema.sql"
    (released,) = [known for known in RELEASED_SCHEMAS if known.schema_file == schema_file]
    return released_sqlite_schema(released)


def site_values(database: Path, columns: dict[str, list[str]]) -> dict[str, set]:
    """Per table, the values of the site column the release file did not have."""
    connection = sqlite3.connect(database)
    try:
        return {
            table: {
                value for (value,) in connection.execute(f"SELECT DISTINCT {column} FROM {table}")
            }
            for table, column in SITE_COLUMNS.items()
            if column not in columns[table]
        }
    finally:
        connection.close()


def table_definitions(database: Path) -> dict[str, str]:
    engine = sqlite_file_engine(database)
    try:
        with engine.connect() as connection:
            return sqlite_definitions(connection)
    finally:
        engine.dispose()


def backup_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "backups"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_release_files_hold_the_rows_their_readme_lists(name: str) -> None:
    """Guards the fixtures: they are the files the releases made, rows and all."""
    checksums = release_row_checksums(release_file(name), released_columns(name))
    assert checksums == RELEASE_CHECKSUMS[name]


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_release_file_is_adopted_with_every_row_checksum_intact(
    name: str,
    tmp_path: Path,
    upgrade: Upgrader,
    head_shape: dict[str, TableShape],
    head_definitions: dict[str, str],
) -> None:
    database = copy_release(name, tmp_path)
    columns = released_columns(name)

    log = upgrade(tmp_path)

    assert ADOPTED_LOG in log and all(line in log for line in UPGRADED_LOGS)
    assert sqlite_revision(database) == HEAD
    assert release_row_checksums(database, columns) == RELEASE_CHECKSUMS[name]
    assert all(values == {LEGACY_SITE} for values in site_values(database, columns).values())
    assert sqlite_schema(database) == head_shape
    assert table_definitions(database) == head_definitions
    (backup,) = backup_files(tmp_path)
    assert "unversioned" in backup.name
    assert release_row_checksums(backup, columns) == RELEASE_CHECKSUMS[name]


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_adopted_release_file_has_exactly_the_models_schema(name: str, tmp_path: Path) -> None:
    copy_release(name, tmp_path)
    environ = command_environment(tmp_path)
    assert alembic_upgrade_head(environ).returncode == 0

    result = run_command([str(VENV_BIN / "alembic"), "check"], environ)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr


def test_legacy_rows_hold_the_variety_found_in_released_databases() -> None:
    """Guards the fixture itself: the adoption tests are only as strong as these rows."""
    rows = legacy_rows(MULTI_SITE, 300)
    jobs, tasks = rows["job"], rows["clienttask"]
    availability = rows["episodeavailability"]
    assert {job["status"] for job in jobs} == set(JOB_STATUSES)
    assert {task["state"] for task in tasks} == set(TASK_STATES)
    assert {row["site"] for row in availability} == set(SITES)
    assert {row["language"] for row in availability} == set(LANGUAGES)
    assert max(job["downloaded_bytes"] for job in jobs) > 2**32
    assert any("T" in job["created_at"] and "+" in job["created_at"] for job in jobs)
    assert any(" " in job["created_at"] and "+" not in job["created_at"] for job in jobs)
    assert any(row["extra"] is None for row in availability)
    assert any("日本語" in (row["extra"] or "") for row in availability)
    assert any("ö" in task["name"] or "の" in task["name"] for task in tasks)
    for table, table_rows in rows.items():
        holding_null = {
            column for row in table_rows for column, value in row.items() if value is None
        }
        assert holding_null == nullable_columns(MULTI_SITE)[table]


def nullable_columns(variant: str) -> dict[str, set[str]]:
    connection = sqlite3.connect(":memory:")
    try:
        connection.executescript(legacy_sql(variant))
        return {
            table: {
                name
                for _cid, name, _type, not_null, _default, in_key in connection.execute(
                    f"PRAGMA table_info({table})"
                )
                if not not_null and not in_key
            }
            for table in LEGACY_TABLES
        }
    finally:
        connection.close()


def test_multi_site_database_is_stamped_and_upgraded_with_every_row_unchanged(
    tmp_path: Path,
    upgrade: Upgrader,
    head_shape: dict[str, TableShape],
    legacy_templates: dict[str, LegacyFile],
) -> None:
    legacy = legacy_templates[MULTI_SITE]
    database = legacy.copy_into(tmp_path)
    before = legacy.rows

    log = upgrade(tmp_path)

    assert ADOPTED_LOG in log and all(line in log for line in UPGRADED_LOGS)
    assert sqlite_revision(database) == HEAD
    assert in_columns_of(dump_sqlite_rows(database, LEGACY_TABLES), before) == before
    assert {table: len(rows) for table, rows in before.items()} == dict.fromkeys(
        LEGACY_TABLES, LEGACY_ROWS
    )
    assert sqlite_schema(database) == head_shape


def test_single_site_database_gains_its_site_on_every_row(
    tmp_path: Path,
    upgrade: Upgrader,
    head_shape: dict[str, TableShape],
    legacy_templates: dict[str, LegacyFile],
) -> None:
    legacy = legacy_templates[SINGLE_SITE]
    database = legacy.copy_into(tmp_path)
    before = legacy.rows

    log = upgrade(tmp_path)

    assert ADOPTED_LOG in log and all(line in log for line in UPGRADED_LOGS)
    assert sqlite_revision(database) == HEAD
    expected = with_legacy_site(before)
    assert in_columns_of(dump_sqlite_rows(database, LEGACY_TABLES), expected) == expected
    shape = sqlite_schema(database)
    assert shape["episodeavailability"].primary_key == (
        "slug",
        "season",
        "episode",
        "language",
        "site",
    )
    assert "ix_episodeavailability_checked_at" in sqlite_indexes(database, "episodeavailability")
    assert shape == head_shape


UNKNOWN_SCHEMAS = {
    "extra column": (
        "ALTER TABLE job ADD COLUMN priority INTEGER",
        "table job: column priority (INTEGER) is not part of that schema",
    ),
    "missing index": (
        "DROP INDEX ix_job_status",
        "table job: index ix_job_status on (status) is missing",
    ),
    "unrelated table": (
        "CREATE TABLE foo (id INTEGER PRIMARY KEY)",
        "table foo is not part of that schema",
    ),
    "renamed column": (
        "ALTER TABLE job RENAME COLUMN message TO note",
        "table job: column message is missing; "
        "table job: column note (VARCHAR) is not part of that schema",
    ),
}
CLOSEST_MULTI_SITE = "closest to the multi-site schema of v1.17.0 ... v2.1.0"
OWN_INDEX = (
    "table job: index idx_user on (message) is not part of that schema "
    '(if you made it, drop it: DROP INDEX "idx_user")'
)


def execute_on(database: Path, *statements: str) -> None:
    connection = sqlite3.connect(database)
    try:
        for statement in statements:
            connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


def create_unknown_schema(database: Path, *changes: str, name: str = "v2.1.0.db") -> None:
    copy_release(name, database.parent)
    execute_on(database, *changes)


def assert_refused_untouched(data_dir: Path, checksum: str) -> None:
    """What every refusal promises: the file byte for byte as it was, unstamped, no backup."""
    database = data_dir / "anibridge_jobs.db"
    assert sha256_of(database) == checksum
    assert "alembic_version" not in sqlite_table_names(database)
    assert backup_files(data_dir) == []


@pytest.mark.parametrize("case", sorted(UNKNOWN_SCHEMAS))
def test_unknown_schema_is_refused_in_process_and_left_untouched(tmp_path: Path, case: str) -> None:
    change, differences = UNKNOWN_SCHEMAS[case]
    database = tmp_path / "anibridge_jobs.db"
    create_unknown_schema(database, change)
    checksum = sha256_of(database)

    with pytest.raises(UnknownSchemaError, match="Nothing was changed") as refusal:
        upgrade_database(settings_for(sqlite_url(tmp_path), tmp_path))

    listing = f"{CLOSEST_MULTI_SITE}, which differs as follows: {differences}. Nothing was changed"
    assert listing in str(refusal.value)
    assert_refused_untouched(tmp_path, checksum)


def test_unknown_schema_is_refused_by_the_command_line_in_one_line(tmp_path: Path) -> None:
    change, difference = UNKNOWN_SCHEMAS["unrelated table"]
    database = tmp_path / "anibridge_jobs.db"
    create_unknown_schema(database, change)
    checksum = sha256_of(database)

    line = failure_line(alembic_upgrade_head(command_environment(tmp_path)), "FAILED:")

    assert difference in line and "no migration history" in line
    assert_refused_untouched(tmp_path, checksum)


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_an_index_of_ones_own_is_refused_by_name_and_dropping_it_as_told_lets_adoption_through(
    name: str, tmp_path: Path
) -> None:
    database = tmp_path / "anibridge_jobs.db"
    create_unknown_schema(database, "CREATE INDEX idx_user ON job (message)", name=name)
    checksum = sha256_of(database)
    settings = settings_for(sqlite_url(tmp_path), tmp_path)

    with pytest.raises(UnknownSchemaError, match="Nothing was changed") as refusal:
        upgrade_database(settings)

    closest = released_schema_of(name).description
    listing = f"closest to {closest}, which differs as follows: {OWN_INDEX}. Nothing was changed"
    assert listing in str(refusal.value)
    assert_refused_untouched(tmp_path, checksum)

    execute_on(database, OWN_INDEX.split("drop it: ")[1].removesuffix(")"))
    upgrade_database(settings)

    assert sqlite_revision(database) == HEAD
    assert release_row_checksums(database, released_columns(name)) == RELEASE_CHECKSUMS[name]


def test_a_column_and_an_index_are_named_in_the_line_the_adoption_guide_shows(
    tmp_path: Path,
) -> None:
    database = tmp_path / "anibridge_jobs.db"
    create_unknown_schema(
        database,
        "ALTER TABLE clienttask ADD COLUMN note TEXT",
        "CREATE INDEX idx_user ON job (message)",
        name="v1.16.1.db",
    )
    checksum = sha256_of(database)

    line = failure_line(python_migrate(command_environment(tmp_path)), "anibridge: error:")

    assert "table clienttask: column note (TEXT) is not part of that schema; " + OWN_INDEX in line
    assert line in (REPO_ROOT / "docs" / "adoption.md").read_text().splitlines()
    assert_refused_untouched(tmp_path, checksum)


def test_empty_alembic_version_table_counts_as_unversioned(tmp_path: Path) -> None:
    database = tmp_path / "anibridge_jobs.db"
    create_legacy_sqlite(database, MULTI_SITE, 100)
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    connection.commit()
    connection.close()
    before = dump_sqlite_rows(database, LEGACY_TABLES)

    upgrade_database(settings_for(sqlite_url(tmp_path), tmp_path))

    assert sqlite_revision(database) == HEAD
    assert in_columns_of(dump_sqlite_rows(database, LEGACY_TABLES), before) == before


def test_failure_midway_through_single_site_conversion_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy_templates: dict[str, LegacyFile]
) -> None:
    """The conversion runs in the upgrade's one transaction: a crash halfway rolls all back."""
    database = legacy_templates[SINGLE_SITE].copy_into(tmp_path)
    checksum = sha256_of(database)
    rebuild_table = app.migration.adoption.adopt.rebuild_table

    def crash_after_the_second_table(connection: sa.Connection, table: str) -> None:
        rebuild_table(connection, table)
        if table == "episodeavailability":
            raise RuntimeError("simulated crash during the conversion")

    monkeypatch.setattr(app.migration.adoption.adopt, "rebuild_table", crash_after_the_second_table)
    with pytest.raises(MigrationError, match="rolled back: RuntimeError: simulated crash"):
        upgrade_database(settings_for(sqlite_url(tmp_path), tmp_path))

    assert sha256_of(database) == checksum
    assert sqlite_table_names(database) == set(LEGACY_TABLES)


@dataclass(frozen=True)
class PostgresState:
    tables: frozenset[str]
    revisions: tuple[str, ...]
    rows: dict[str, list[tuple]]


def postgres_state(url: URL) -> PostgresState:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = frozenset(sa.inspect(connection).get_table_names())
            return PostgresState(
                tables,
                current_heads(connection),
                dump_rows(connection, LEGACY_TABLES),
            )
    finally:
        engine.dispose()


def test_postgres_database_made_by_create_all_is_adopted_with_rows_kept(
    postgres_url: URL, tmp_path: Path
) -> None:
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        create_legacy_postgres(connection, 300)
    engine.dispose()
    before = postgres_state(postgres_url)

    upgrade_database(settings_for(postgres_url, tmp_path))

    after = postgres_state(postgres_url)
    assert in_columns_of(after.rows, before.rows) == before.rows
    assert after.revisions == (HEAD,)
    assert "strm_url_mapping" in after.tables


def test_unknown_postgres_schema_is_refused_with_nothing_changed(
    postgres_url: URL, tmp_path: Path
) -> None:
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        create_legacy_postgres(connection, 50)
        connection.exec_driver_sql("CREATE TABLE foo (id INTEGER PRIMARY KEY)")
    engine.dispose()
    before = postgres_state(postgres_url)

    with pytest.raises(UnknownSchemaError, match="table foo is not part of that schema"):
        upgrade_database(settings_for(postgres_url, tmp_path))

    after = postgres_state(postgres_url)
    assert after == before
    assert "alembic_version" not in after.tables


# --- what users add to their files -------------------------------------------

VARIANTS = {
    "analyze": (["analyze"], False),
    "views": (["views"], False),
    "triggers": (["triggers"], False),
    "wal with views, triggers and statistics": (["views", "triggers", "analyze"], True),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", RELEASE_FILES)
def test_release_file_with_user_additions_is_adopted_and_they_keep_working(
    name: str, variant: str, tmp_path: Path, upgrade: Upgrader, head_definitions: dict[str, str]
) -> None:
    database = copy_release(name, tmp_path)
    additions, in_wal = VARIANTS[variant]
    (leave_in_write_ahead_log if in_wal else add_to_release_file)(database, additions)
    columns = released_columns(name)
    views_before = view_counts(database) if "views" in additions else None

    upgrade(tmp_path)

    assert sqlite_revision(database) == HEAD
    assert release_row_checksums(database, columns) == RELEASE_CHECKSUMS[name]
    assert table_definitions(database) == head_definitions
    assert user_objects(database) == user_objects_expected(additions)
    if views_before is not None:
        assert view_counts(database) == views_before
    if "triggers" in additions:
        assert_triggers_fire(database)
    if "analyze" in additions:
        assert analysed_tables(database) >= set(LEGACY_TABLES)


def batch_rebuild_of_job(revision: str, *changes: str) -> InjectedRevision:
    """A later revision that makes SQLite rebuild `job` (Alembic's batch mode, as autogenerate)."""
    body = "".join(f"        batch_op.{change}\n" for change in changes)
    return InjectedRevision(
        revision,
        "Rebuild job in batch mode",
        f'    with op.batch_alter_table("job", recreate="always") as batch_op:\n{body}',
    )


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_later_batch_rebuild_keeps_user_views_and_triggers_working(
    name: str, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    plant_revisions(
        project, [batch_rebuild_of_job(LATER_REBUILD, 'alter_column("message", type_=sa.Text())')]
    )
    database = copy_release(name, tmp_path / "data")
    add_to_release_file(database, ["views", "triggers"])
    views_before = view_counts(database)

    outcome = run_upgrade(
        project, upgrade_environment(project, sqlite_url(tmp_path / "data"), tmp_path / "data")
    )

    assert outcome.returncode == 0, outcome.output
    assert f"Running upgrade {HEAD} -> {LATER_REBUILD}" in outcome.output
    assert sqlite_revision(database) == LATER_REBUILD
    assert release_row_checksums(database, released_columns(name)) == RELEASE_CHECKSUMS[name]
    assert user_objects(database) == user_objects_expected(["views", "triggers"])
    assert view_counts(database) == views_before
    assert_triggers_fire(database)


def test_revision_that_breaks_a_user_view_is_rolled_back_with_one_line(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    plant_revisions(
        project,
        [
            batch_rebuild_of_job(
                LATER_REBUILD, 'drop_index("ix_job_status")', 'drop_column("status")'
            )
        ],
    )
    database = copy_release("v1.16.1.db", tmp_path / "data")
    add_to_release_file(database, ["views"])
    checksum = sha256_of(database)
    environ = upgrade_environment(project, sqlite_url(tmp_path / "data"), tmp_path / "data")

    outcome = run_upgrade(project, environ)

    assert outcome.returncode != 0
    assert "Traceback" not in outcome.output, outcome.output
    (line,) = [line for line in outcome.output.splitlines() if "FAILED" in line]
    assert "view completed_jobs" in line and "no such column: status" in line
    assert "the upgrade was rolled back" in line and "Nothing was changed" not in line
    assert sha256_of(database) == checksum


def test_view_that_does_not_work_is_refused_before_any_backup(tmp_path: Path) -> None:
    database = copy_release("v1.16.1.db", tmp_path)
    connection = sqlite3.connect(database)
    connection.execute("CREATE VIEW broken AS SELECT no_such_column FROM job")
    connection.commit()
    connection.close()
    checksum = sha256_of(database)

    line = failure_line(python_migrate(command_environment(tmp_path)), "no such column")

    assert "view broken" in line and "nothing was changed" in line
    assert sha256_of(database) == checksum
    assert backup_files(tmp_path) == []


def test_postgres_types_are_compared_exactly_and_a_near_miss_is_refused(
    postgres_url: URL, tmp_path: Path
) -> None:
    """No release ran on PostgreSQL: INTEGER byte counts or naive timestamps are not ours."""
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        create_legacy_postgres(connection, 50)
        connection.exec_driver_sql("UPDATE job SET downloaded_bytes = mod(downloaded_bytes, 1000)")
        connection.exec_driver_sql("ALTER TABLE job ALTER COLUMN downloaded_bytes TYPE INTEGER")
        connection.exec_driver_sql(
            "ALTER TABLE job ALTER COLUMN created_at TYPE TIMESTAMP WITHOUT TIME ZONE"
        )
    engine.dispose()
    before = postgres_state(postgres_url)

    with pytest.raises(UnknownSchemaError, match="Nothing was changed") as refusal:
        upgrade_database(settings_for(postgres_url, tmp_path))

    message = str(refusal.value)
    assert "closest to the baseline schema as this release creates it on postgresql" in message
    assert "table job: column downloaded_bytes is INTEGER, expected BIGINT" in message
    assert (
        "table job: column created_at is TIMESTAMP WITHOUT TIME ZONE, "
        "expected TIMESTAMP WITH TIME ZONE"
    ) in message
    assert postgres_state(postgres_url) == before
    assert postgres_schemas(postgres_url) == {"public"}


def postgres_schemas(url: URL) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            names = sa.inspect(connection).get_schema_names()
    finally:
        engine.dispose()
    return set(names) - {"information_schema"}


# --- kills during adoption ----------------------------------------------------

ADOPTION_KILL_TRIALS = env_int("ADOPTION_KILL_TRIALS", 6)
ADOPTION_KILL_ROWS = env_int("ADOPTION_KILL_ROWS", 100_000)


def grown_release_file(path: Path, name: str, rows: int) -> Path:
    """A release file whose `episodeavailability` gained `rows` generated rows."""
    copy_release(name, path.parent)
    grown = [
        {**row, "slug": f"grown-{row['slug']}"}
        for row in legacy_rows(SINGLE_SITE, rows)["episodeavailability"]
    ]
    connection = sqlite3.connect(path)
    try:
        insert_rows(connection, {"episodeavailability": grown})
        connection.commit()
    finally:
        connection.close()
    return path


@pytest.mark.slow
def test_sigkill_during_adoption_leaves_the_release_file_or_the_adopted_one(
    tmp_path: Path,
    head_definitions: dict[str, str],
) -> None:
    """Killed at any moment, the file is whole: as the release left it or adopted, never between."""
    name = "v1.16.1.db"
    template = grown_release_file(
        tmp_path / "template" / "anibridge_jobs.db", name, ADOPTION_KILL_ROWS
    )
    columns = released_columns(name)
    before = release_row_checksums(template, columns)
    project = copy_project(tmp_path / "project")
    data_dir = tmp_path / "data"
    environ = upgrade_environment(project, sqlite_url(data_dir), data_dir)
    copy_into(template, data_dir)
    window = run_upgrade(project, environ, "app.migrate").seconds * KILL_WINDOW_MARGIN
    rng = seeded_random("adoption kill")
    ended = []
    for _ in range(ADOPTION_KILL_TRIALS):
        database = copy_into(template, data_dir)
        run_and_kill(project, environ, rng.uniform(0, window))
        assert sqlite_integrity(database) == "ok"
        ended.append(sqlite_revision_or_none(database))
        expected_definitions = head_definitions if ended[-1] else single_site_definitions()
        assert table_definitions(database) == expected_definitions
        assert release_row_checksums(database, columns) == before
        rerun = run_upgrade(project, environ, "app.migrate")
        assert rerun.returncode == 0, rerun.output
        assert sqlite_revision(database) == HEAD
        assert release_row_checksums(database, columns) == before
    adopted = sum(1 for revision in ended if revision)
    print(f"adoption kill: {len(ended) - adopted} left as the release made them, {adopted} adopted")


def copy_into(template: Path, data_dir: Path) -> Path:
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    return Path(shutil.copyfile(template, data_dir / "anibridge_jobs.db"))


def sqlite_revision_or_none(database: Path) -> str | None:
    return sqlite_revision(database) if "alembic_version" in sqlite_table_names(database) else None


def single_site_definitions() -> dict[str, str]:
    return released_sqlite_schema(app.migration.adoption.adopt.SINGLE_SITE).definitions


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1.16.1.db", "v1.16.1-then-v2.1.0.db"])
def test_concurrent_starts_convert_a_release_file_once(name: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    data_dir = tmp_path / "data"
    database = copy_release(name, data_dir)
    environ = upgrade_environment(project, sqlite_url(data_dir), data_dir)

    outcomes = run_concurrently(project, environ, ["alembic", "app.migrate"] * 2, tmp_path / "gate")

    assert [outcome.returncode for outcome in outcomes] == [0] * 4, [o.output for o in outcomes]
    conversions = sum("to the multi-site schema" in outcome.output for outcome in outcomes)
    assert conversions == 1
    assert sqlite_revision(database) == HEAD
    assert release_row_checksums(database, released_columns(name)) == RELEASE_CHECKSUMS[name]
    assert len(backup_files(data_dir)) == 1


# --- random variants of the release files ----------------------------------------

VARIANT_TRIALS = env_int("ADOPTION_VARIANT_TRIALS", 24)
VARIANT_SEEDS = env_int("ADOPTION_VARIANT_SEEDS", 1)


@dataclass
class ReleaseObjects:
    """The release file's own columns and indexes that no refused change has used yet.

    A refused change picks only from these, marks what it picked as used, and
    makes its own objects under fresh names; so no change can undo another (a
    dropped index is never one a change made, a renamed column never one a
    change indexed) and each change's sentence still holds once all have run.
    """

    columns: dict[str, list[str]]
    indexes: dict[str, tuple[str, tuple[str, ...]]]
    made: int = 0

    def fresh(self, stem: str) -> str:
        self.made += 1
        return f"{stem}_{self.made}"

    def take_column(self, rng: random.Random) -> tuple[str, str]:
        table = rng.choice([table for table in LEGACY_TABLES if self.columns[table]])
        column = rng.choice(self.columns[table])
        self.columns[table].remove(column)
        return table, column


def release_objects(connection: sqlite3.Connection) -> ReleaseObjects:
    columns = {
        table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
        for table in LEGACY_TABLES
    }
    indexes = {
        name: (table, tuple(row[2] for row in connection.execute(f"PRAGMA index_info({name})")))
        for name, table in connection.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
    }
    return ReleaseObjects(columns, indexes)


RefusedChange = Callable[[random.Random, sqlite3.Connection, ReleaseObjects], list[str]]


def add_column(rng: random.Random, connection: sqlite3.Connection, release: ReleaseObjects):
    table, name = rng.choice(LEGACY_TABLES), release.fresh("note")
    kind = rng.choice(("TEXT", "INTEGER", "VARCHAR"))
    connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    return [f"table {table}: column {name} ({kind}) is not part of that schema"]


def add_index(rng: random.Random, connection: sqlite3.Connection, release: ReleaseObjects):
    (table, column), name = release.take_column(rng), release.fresh("my_index")
    connection.execute(f"CREATE INDEX {name} ON {table} ({column})")
    return [
        f"table {table}: index {name} on ({column}) is not part of that schema "
        f'(if you made it, drop it: DROP INDEX "{name}")'
    ]


def drop_index(rng: random.Random, connection: sqlite3.Connection, release: ReleaseObjects):
    name = rng.choice(sorted(release.indexes))
    table, columns = release.indexes.pop(name)
    connection.execute(f"DROP INDEX {name}")
    return [f"table {table}: index {name} on ({', '.join(columns)}) is missing"]


def add_table(rng: random.Random, connection: sqlite3.Connection, release: ReleaseObjects):
    name = release.fresh("notes")
    connection.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT)")
    return [f"table {name} is not part of that schema"]


def rename_column(rng: random.Random, connection: sqlite3.Connection, release: ReleaseObjects):
    table, column = release.take_column(rng)
    connection.execute(f"ALTER TABLE {table} RENAME COLUMN {column} TO renamed_{column}")
    return [
        f"table {table}: column {column} is missing",
        f"table {table}: column renamed_{column} (",
    ]


REFUSED_CHANGES: tuple[RefusedChange, ...] = (
    add_column,
    add_index,
    drop_index,
    add_table,
    rename_column,
)
ACCEPTED_CHANGES = {
    **USER_ADDITIONS,
    "vacuum": lambda connection: connection.execute("VACUUM"),
    "wal": lambda connection: connection.execute("PRAGMA journal_mode = WAL"),
}


def tables_and_indexes(database: Path) -> set[tuple]:
    """The file's tables and indexes as `sqlite_master` stores them (SQLite's own left out)."""
    connection = sqlite3.connect(database)
    try:
        return set(
            connection.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master "
                "WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
            )
        )
    finally:
        connection.close()


def random_variant_trial(
    rng: random.Random, data_dir: Path, head_shape: dict[str, TableShape], trial: int = 0
) -> bool:
    """Make one random variant of a release file and upgrade it; True if it was refused.

    Whether the file must be refused is read from the file made, not from the
    list of changes: its tables and indexes differ from the release's or not.
    The changes' own sentences are what the refusal must name.
    """
    name = rng.choice(RELEASE_FILES)
    database = copy_release(name, data_dir)
    release_schema = tables_and_indexes(database)
    accepted = rng.sample(sorted(ACCEPTED_CHANGES), rng.randrange(len(ACCEPTED_CHANGES) + 1))
    refused = rng.choices(REFUSED_CHANGES, k=rng.choice((0, 0, 1, 2)))
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        release = release_objects(connection)
        for change in accepted:
            ACCEPTED_CHANGES[change](connection)
        expected = [part for change in refused for part in change(rng, connection, release)]
    finally:
        connection.close()
    label = f"trial {trial}: {name}, {accepted}, {[change.__name__ for change in refused]}"
    must_refuse = tables_and_indexes(database) != release_schema
    assert must_refuse == bool(expected), (
        f"{label}: the file's tables and indexes {'differ from' if must_refuse else 'equal'} "
        f"the release's, yet the changes expect {expected}"
    )
    checksum = sha256_of(database)
    settings = settings_for(sqlite_url(data_dir), data_dir)
    if must_refuse:
        with pytest.raises(UnknownSchemaError) as refusal:
            upgrade_database(settings)
        message = str(refusal.value)
        assert f"closest to {released_schema_of(name).description}," in message, (label, message)
        assert [part for part in expected if part not in message] == [], (label, message)
        assert sha256_of(database) == checksum, label
        assert backup_files(data_dir) == [], label
    else:
        upgrade_database(settings)
        assert sqlite_revision(database) == HEAD, label
        assert sqlite_schema(database) == head_shape, label
        checksums = release_row_checksums(database, released_columns(name))
        assert checksums == RELEASE_CHECKSUMS[name], label
    return must_refuse


def test_random_variants_of_release_files_are_adopted_whole_or_refused_untouched(
    tmp_path: Path, head_shape: dict[str, TableShape]
) -> None:
    """Any mix of harmless additions is adopted; any other change is refused, named, untouched.

    Each seed runs VARIANT_TRIALS trials; a failure's captured output ends with its seed.
    """
    refused = 0
    for _ in range(VARIANT_SEEDS):
        rng = seeded_random("adoption variants")
        for trial in range(VARIANT_TRIALS):
            data_dir = tmp_path / f"trial-{trial}"
            refused += random_variant_trial(rng, data_dir, head_shape, trial)
            shutil.rmtree(data_dir)
    trials = VARIANT_SEEDS * VARIANT_TRIALS
    print(f"adoption variants: {trials} trials, {trials - refused} adopted, {refused} refused")
