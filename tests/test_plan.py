"""`anibridge plan`: its outcome and row counts are what the upgrade does; it changes nothing.

Every case plans first, checks that nothing changed, then runs the real
upgrade (`python -m app.migrate`) on the same database and compares: the
outcome and its sentence, the revisions applied, the rows each table holds
afterwards, and how many rows changed value. Both engines; the release files
are the ones the released code made. Revisions that change data are added to a
scratch copy of the project, as the fault tests do.
"""

import hashlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from app.migration.journal import HISTORY_TABLE
from tests.chain import BASELINE, CHAIN, HEAD, InjectedRevision, after, project_with
from tests.faults import upgrade_environment
from tests.legacy_data import add_to_release_file, release_file

RELEASES = ("v1.16.1.db", "v2.1.0.db", "v1.16.1-then-v2.1.0.db")
RELEASE_SCHEMAS = {
    "v1.16.1.db": "single-site",
    "v2.1.0.db": "multi-site",
    "v1.16.1-then-v2.1.0.db": "half-converted",
}
PLAN_KEYS = {
    "format",
    "database",
    "engine",
    "outcome",
    "exit_code",
    "summary",
    "current",
    "heads",
    "pending",
    "adopts",
    "refusal",
    "steps",
    "backup",
    "not_copied",
}
STEP_KEYS = {"kind", "revision", "message", "seconds", "schema", "statements", "rebuilt"}
STEP_KEYS |= {"tables", "locks"}
TABLE_KEYS = {"table", "rows_before", "rows_after", "rows_changed", "rebuilt"}
TABLE_KEYS |= {"columns_added", "columns_dropped"}
UNKNOWN_REVISION = "ffffffffffff"

DATA_CHANGE = InjectedRevision(
    "da7a00000001",
    "Flag failed jobs, drop queued tasks, add a column, record a mapping",
    """\
    op.execute("UPDATE job SET message = 'retry later' WHERE status = 'failed'")
    op.execute("DELETE FROM clienttask WHERE state = 'queued'")
    with op.batch_alter_table("job", recreate="always") as batch_op:
        batch_op.add_column(sa.Column("fixture_priority", sa.Integer(), nullable=True))
    op.execute(
        "INSERT INTO strm_url_mapping (strm_path, resolved_url, resolved_at, slug, season, "
        "episode, language, site) VALUES ('/a.strm', 'https://example.invalid/a', "
        "'2024-01-01 00:00:00', 'a', 1, 1, 'German Dub', 'aniworld.to')"
    )
""",
)
FILL_BATCH = 2
FILL = InjectedRevision(
    "f111a0000001",
    "Add job.fixture_priority and fill it for failed jobs, in batches",
    f"""\
    op.add_column("job", sa.Column("fixture_priority", sa.Integer(), nullable=True))
    failed = op.get_bind().execute(
        sa.text("SELECT count(*) FROM job WHERE status = 'failed'")
    ).scalar_one()
    for _ in range(-(-failed // {FILL_BATCH})):
        op.execute(
            "UPDATE job SET fixture_priority = 1 WHERE id IN (SELECT id FROM job "
            "WHERE status = 'failed' AND fixture_priority IS NULL LIMIT {FILL_BATCH})"
        )
""",
)
FILL_STATEMENT = "UPDATE job SET fixture_priority = 1 WHERE id IN"
DEFAULTED = InjectedRevision(
    "defa00000001",
    "Add job.fixture_attempts, 0 for every job",
    '    op.add_column("job", sa.Column("fixture_attempts", sa.Integer(), nullable=False, '
    'server_default="0"))\n',
)
OUTSIDE_TRANSACTION = InjectedRevision(
    "c0cc00000001",
    "Index job.status concurrently",
    """\
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_job_status_concurrently", "job", ["status"], postgresql_concurrently=True
        )
""",
)


# --- running the commands ---------------------------------------------------


def run(project: Path, env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


PLAN_JSON = ("-m", "app.main", "plan", "--json")


def plan(project: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run(project, env, *PLAN_JSON)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1, 2), result.stderr
    assert_scratch_copy_gone(env, result.stderr)
    return result.returncode, json.loads(result.stdout)


def plan_text(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = run(project, env, "-m", "app.main", "plan")
    assert_scratch_copy_gone(env, result.stderr)
    return result


SCRATCH_NAMED = re.compile(r"a scratch (database|schema) (anibridge_plan_[0-9a-f]+)")


def assert_scratch_copy_gone(env: dict[str, str], stderr: str) -> None:
    """The scratch database or schema the plan named on stderr (PostgreSQL) exists no more.

    The plan names it as soon as it is made: no name, no copy.
    """
    named = SCRATCH_NAMED.search(stderr)
    if named is None:
        return
    kind, name = named.groups()
    catalogue = {"database": "pg_database WHERE datname", "schema": "pg_namespace WHERE nspname"}
    engine = engine_for(make_url(env["DATABASE_URL"]))
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sa.text(f"SELECT count(*) FROM {catalogue[kind]} = :name"), {"name": name}
            ).scalar_one()
    finally:
        engine.dispose()
    assert found == 0, f"the plan left its scratch {kind} {name}"


def upgrade(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(project, env, "-m", "app.migrate")


def upgrade_error(result: subprocess.CompletedProcess) -> str:
    """The one line the failed upgrade printed, without its `anibridge: error: ` prefix."""
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("anibridge: error:")]
    return line.removeprefix("anibridge: error: ")


# --- looking at the database -----------------------------------------------


def engine_for(url: URL) -> sa.Engine:
    return sa.create_engine(url, poolclass=NullPool)


def row_counts(url: URL) -> dict[str, int]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
            return {
                table: connection.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                for table in tables
            }
    finally:
        engine.dispose()


def history(url: URL) -> list[tuple[str, str]]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(f"SELECT direction, revision FROM {HISTORY_TABLE} ORDER BY id")
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def rows_by_key(url: URL, table: str, key: str, columns: list[str]) -> dict[Any, tuple]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            listed = ", ".join(columns)
            rows = connection.execute(sa.text(f"SELECT {key}, {listed} FROM {table}"))
            return {row[0]: tuple(row[1:]) for row in rows}
    finally:
        engine.dispose()


def rows_with_a_value_in(url: URL, table: str, columns: list[str]) -> int:
    """Rows of `table` with a value (not NULL) in any of `columns`: what a fill wrote."""
    if not columns:
        return 0
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            condition = " OR ".join(f'"{column}" IS NOT NULL' for column in columns)
            return connection.execute(
                sa.text(f'SELECT count(*) FROM "{table}" WHERE {condition}')
            ).scalar_one()
    finally:
        engine.dispose()


def file_state(path: Path) -> tuple[str, int, int]:
    """Bytes (as a digest), mode and mtime: what a plan must leave as they were."""
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mode, stat.st_mtime_ns


def folder_listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def postgres_state(url: URL) -> dict[str, Any]:
    """Every object of the schema, each table's rows as a digest, and every sequence's value."""
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            objects = connection.execute(
                sa.text(
                    "SELECT c.relname, c.relkind, c.relfilenode FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                    "ORDER BY 1, 2"
                )
            ).all()
            tables = [name for name, kind, _ in objects if kind == "r"]
            digests = {
                table: connection.execute(
                    sa.text(
                        f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                        f"t::text), '')) FROM \"{table}\" t"
                    )
                ).one()
                for table in tables
            }
            sequences = connection.execute(
                sa.text("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
            ).all()
            namespaces = connection.execute(
                sa.text("SELECT nspname FROM pg_namespace ORDER BY 1")
            ).all()
            return {
                "objects": [tuple(row) for row in objects],
                "rows": {table: tuple(value) for table, value in digests.items()},
                "sequences": [tuple(row) for row in sequences],
                # A session's temporary schemas stay once made: slots, not objects.
                "schemas": [
                    row[0]
                    for row in namespaces
                    if not row[0].startswith(("pg_temp", "pg_toast_temp"))
                ],
            }
    finally:
        engine.dispose()


def run_sql(url: URL, *statements: str) -> None:
    """Run `statements` in one transaction, as someone working on the database by hand."""
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def last_rows_after(plan_json: dict[str, Any]) -> dict[str, int | None]:
    """Each table the plan touched, with the rows its last step left."""
    final: dict[str, int | None] = {}
    for step in plan_json["steps"]:
        for change in step["tables"]:
            final[change["table"]] = change["rows_after"]
    return final


def applied_revisions(url: URL) -> list[str]:
    return [revision for direction, revision in history(url) if direction == "upgrade"]


# --- set-ups ----------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def sqlite_database(data_dir: Path) -> URL:
    return URL.create("sqlite", database=str(data_dir / "anibridge_jobs.db"))


def copy_release(name: str, data_dir: Path) -> Path:
    target = data_dir / "anibridge_jobs.db"
    shutil.copyfile(release_file(name), target)
    target.chmod(0o640)
    return target


REPO = Path(__file__).resolve().parents[1]


def at_revision(url: URL, data_dir: Path, revision: str) -> None:
    """Bring a database to `revision` with the release's own upgrade, then fill it from v2.1.0."""
    env = upgrade_environment(REPO, url, data_dir)
    result = run(REPO, env, "-m", "alembic", "upgrade", revision)
    assert result.returncode == 0, result.stderr
    source = sqlite3.connect(release_file("v2.1.0.db"))
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            for table in ("job", "clienttask", "episodeavailability"):
                cursor = source.execute(f"SELECT * FROM {table}")
                names = [column[0] for column in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor]
                if table == "episodeavailability":
                    rows = [{**row, "available": bool(row["available"])} for row in rows]
                if table in ("job", "clienttask", "episodeavailability"):
                    rows = [with_parsed_times(row) for row in rows]
                connection.execute(sa.table(table, *map(sa.column, names)).insert(), rows)
    finally:
        engine.dispose()
        source.close()


def at_head_with(url: URL, data_dir: Path, project: Path) -> tuple[Path, dict[str, str]]:
    """The database at the release's head, and the environment of `project` upgrading it."""
    at_revision(url, data_dir, "head")
    return project, upgrade_environment(project, url, data_dir)


def with_parsed_times(row: dict[str, Any]) -> dict[str, Any]:
    from datetime import UTC, datetime

    parsed = {}
    for name, value in row.items():
        if name.endswith(("_at", "_on")) and isinstance(value, str):
            value = datetime.fromisoformat(value).replace(tzinfo=UTC)
        parsed[name] = value
    return parsed


# --- the release files (SQLite) ----------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_plan_of_a_release_file_is_what_the_upgrade_does_and_changes_nothing(
    release: str, data_dir: Path
) -> None:
    database = copy_release(release, data_dir)
    before = file_state(database)
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)

    code, planned = plan(REPO, env)

    assert file_state(database) == before
    assert folder_listing(data_dir) == ["anibridge_jobs.db"]
    assert code == 2 and planned["outcome"] == "upgrade"
    assert planned["adopts"]["schema"] == RELEASE_SCHEMAS[release]
    assert planned["adopts"]["revision"] == BASELINE
    assert planned["pending"] == after(BASELINE)
    assert planned["backup"]["bytes"] == database.stat().st_size
    adopted = planned["steps"][0]
    assert adopted["kind"] == "adopt"
    if release != "v2.1.0.db":
        assert "episodeavailability" in adopted["rebuilt"]

    counts_before = row_counts(sqlite_database(data_dir))
    result = upgrade(REPO, env)
    assert result.returncode == 0, result.stderr
    counts_after = row_counts(sqlite_database(data_dir))
    for table, rows in last_rows_after(planned).items():
        assert counts_after.get(table) == rows, table
    for change in adopted["tables"]:
        assert change["rows_before"] == counts_before[change["table"]]
        assert change["rows_changed"] == rows_with_a_value_in(
            sqlite_database(data_dir), change["table"], change["columns_added"]
        ), change
    if release == "v1.16.1.db":
        changed = {change["table"]: change["rows_changed"] for change in adopted["tables"]}
        assert changed["job"] == counts_before["job"] > 0
    assert applied_revisions(sqlite_database(data_dir)) == planned["pending"]


def test_plan_text_leads_with_the_outcome_and_names_the_release(data_dir: Path) -> None:
    copy_release("v1.16.1.db", data_dir)
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)
    result = plan_text(REPO, env)
    assert result.returncode == 2, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("An upgrade would adopt this database made before migrations")
    assert "single-site" in first and HEAD in first
    assert "rebuilt: clienttask, episodeavailability, job" in result.stdout
    assert "backup first:" in result.stdout


def test_refused_file_gets_the_upgrades_own_sentence(data_dir: Path) -> None:
    database = copy_release("v2.1.0.db", data_dir)
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE job ADD COLUMN note VARCHAR")
    connection.close()
    before = file_state(database)
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)

    code, planned = plan(REPO, env)

    assert file_state(database) == before
    assert code == 1 and planned["outcome"] == "refused"
    assert planned["summary"].startswith("An upgrade would be refused: ")
    assert planned["refusal"] == upgrade_error(upgrade(REPO, env))


def test_file_with_user_additions_plans_as_the_upgrade_adopts_it(data_dir: Path) -> None:
    database = copy_release("v1.16.1.db", data_dir)
    add_to_release_file(database, ["views", "triggers"])
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)
    code, planned = plan(REPO, env)
    assert code == 2 and planned["adopts"]["schema"] == "single-site"
    result = upgrade(REPO, env)
    assert result.returncode == 0, result.stderr
    assert row_counts(sqlite_database(data_dir))["job"] == last_rows_after(planned)["job"]


def test_missing_database_plans_the_schema_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-yet"
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)
    code, planned = plan(REPO, env)
    assert code == 2 and planned["outcome"] == "upgrade"
    assert planned["summary"].startswith("An upgrade would create the schema")
    assert planned["pending"] == list(CHAIN)
    assert planned["backup"] is None
    assert not data_dir.exists()


def test_no_room_for_the_copy_is_one_line(data_dir: Path, monkeypatch) -> None:
    from app.config import load_settings
    from app.migration import backup
    from app.migration import plan as planner
    from app.migration.errors import MigrationError

    copy_release("v2.1.0.db", data_dir)
    monkeypatch.setattr(backup, "space_for_copy", lambda _database, _folder: (10, 2**20))
    settings = load_settings({"DATA_DIR": str(data_dir)})
    with pytest.raises(MigrationError) as raised:
        planner.plan_upgrade(settings, notice=print)
    message = str(raised.value)
    assert "not enough free space" in message and "1.0 MiB needed" in message
    assert "\n" not in message
    assert folder_listing(data_dir) == ["anibridge_jobs.db"]


def test_no_room_for_the_upgrades_backup_is_the_upgrades_refusal(
    data_dir: Path, monkeypatch
) -> None:
    from app.config import load_settings
    from app.migration import backup
    from app.migration import plan as planner

    copy_release("v1.16.1.db", data_dir)
    backups = data_dir / "backups"
    real = backup.space_for_copy

    def no_room_for_backups(database: Path, folder: Path) -> tuple[int, int]:
        free, needed = real(database, folder)
        return (10, needed) if folder == backups else (free, needed)

    monkeypatch.setattr(backup, "space_for_copy", no_room_for_backups)
    monkeypatch.setattr(planner, "space_for_copy", no_room_for_backups)
    plan_result = planner.plan_upgrade(load_settings({"DATA_DIR": str(data_dir)}), print)
    assert plan_result.outcome == "refused" and plan_result.exit_code == 1
    assert plan_result.refusal.startswith("not enough free space in")
    assert "for a backup before changing the database" in plan_result.refusal


# --- both engines ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def engine_url(request: pytest.FixtureRequest, data_dir: Path) -> URL:
    if request.param == "sqlite":
        return sqlite_database(data_dir)
    return request.getfixturevalue("postgres_url")


def unchanged_check(url: URL, data_dir: Path):
    """A function that asserts the database is as it was when this was called."""
    if url.get_backend_name() == "sqlite":
        database = Path(url.database)
        before = file_state(database)
        listing = folder_listing(data_dir)

        def check() -> None:
            assert file_state(database) == before
            assert folder_listing(data_dir) == listing

        return check
    before = postgres_state(url)

    def check_postgres() -> None:
        assert postgres_state(url) == before

    return check_postgres


def plan_changing_nothing(
    project: Path, env: dict[str, str], url: URL, data_dir: Path
) -> tuple[int, dict[str, Any]]:
    """Plan, and check the database is as it was before."""
    unchanged = unchanged_check(url, data_dir)
    planned = plan(project, env)
    unchanged()
    return planned


def test_database_at_head_has_nothing_to_do(engine_url: URL, data_dir: Path) -> None:
    at_revision(engine_url, data_dir, "head")
    env = upgrade_environment(REPO, engine_url, data_dir)
    code, planned = plan_changing_nothing(REPO, env, engine_url, data_dir)
    assert code == 0 and planned["outcome"] == "up_to_date"
    assert planned["steps"] == [] and planned["pending"] == []
    assert planned["summary"] == f"Nothing to do: the database is at head ({HEAD})."


def test_newer_database_is_refused_in_the_upgrades_words(engine_url: URL, data_dir: Path) -> None:
    at_revision(engine_url, data_dir, "head")
    run_sql(engine_url, f"UPDATE alembic_version SET version_num = '{UNKNOWN_REVISION}'")
    env = upgrade_environment(REPO, engine_url, data_dir)
    code, planned = plan_changing_nothing(REPO, env, engine_url, data_dir)
    assert code == 1 and planned["outcome"] == "newer"
    assert planned["refusal"] == upgrade_error(upgrade(REPO, env))


def test_pending_revision_that_changes_data_is_counted_exactly(
    engine_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    project, env = at_head_with(engine_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    columns = ["status", "message", "progress", "updated_at"]
    jobs_before = rows_by_key(engine_url, "job", "id", columns)

    code, planned = plan_changing_nothing(project, env, engine_url, data_dir)

    assert code == 2 and planned["outcome"] == "upgrade"
    assert planned["pending"] == [DATA_CHANGE.revision]
    (step,) = planned["steps"]
    tables = {change["table"]: change for change in step["tables"]}
    assert "job" in step["rebuilt"]
    assert tables["job"]["columns_added"] == ["fixture_priority"]

    result = upgrade(project, env)
    assert result.returncode == 0, result.stderr
    jobs_after = rows_by_key(engine_url, "job", "id", columns)
    changed = sum(1 for key, row in jobs_before.items() if jobs_after.get(key) != row)
    assert tables["job"]["rows_changed"] == changed > 0
    counts = row_counts(engine_url)
    for table, change in tables.items():
        assert counts.get(table) == change["rows_after"], table
    assert tables["clienttask"]["rows_after"] < tables["clienttask"]["rows_before"]
    assert tables["strm_url_mapping"]["rows_after"] == 1
    assert applied_revisions(engine_url)[-1] == DATA_CHANGE.revision


def test_plan_json_keys_are_the_documented_ones(engine_url: URL, data_dir: Path, tmp_path: Path):
    at_revision(engine_url, data_dir, "head")
    project = project_with(tmp_path, [DATA_CHANGE])
    _, planned = plan(project, upgrade_environment(project, engine_url, data_dir))
    assert set(planned) == PLAN_KEYS
    assert planned["format"] == 2
    for step in planned["steps"]:
        assert set(step) == STEP_KEYS
        for statement in step["statements"]:
            assert set(statement) == {"sql", "count", "seconds"}
        for change in step["tables"]:
            assert set(change) == TABLE_KEYS
        for lock in step["locks"]:
            assert set(lock) == {"table", "mode", "held_s"}


# --- PostgreSQL only ---------------------------------------------------------


def test_postgres_plan_lists_the_locks_and_says_so_first(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    result = plan_text(project, env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Copying one snapshot of the live database into a scratch ")
    _, planned = plan(project, env)
    locks = {(lock["table"], lock["mode"]) for lock in planned["steps"][0]["locks"]}
    assert ("job", "ROW EXCLUSIVE") in locks
    assert ("job", "ACCESS EXCLUSIVE") in locks
    assert all(lock["held_s"] >= 0 for lock in planned["steps"][0]["locks"])


def test_postgres_unversioned_database_is_adopted_in_the_plan_as_in_the_upgrade(
    postgres_url: URL, data_dir: Path
) -> None:
    at_revision(postgres_url, data_dir, BASELINE)
    run_sql(postgres_url, f"DROP TABLE alembic_version, {HISTORY_TABLE}")
    env = upgrade_environment(REPO, postgres_url, data_dir)
    code, planned = plan_changing_nothing(REPO, env, postgres_url, data_dir)
    assert code == 2 and planned["adopts"]["revision"] == BASELINE
    result = upgrade(REPO, env)
    assert result.returncode == 0, result.stderr
    assert [revision for _, revision in history(postgres_url)] == list(CHAIN)


def test_fill_is_counted_and_its_batches_are_shown_once(
    engine_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    project, env = at_head_with(engine_url, data_dir, project_with(tmp_path, [FILL]))

    code, planned = plan_changing_nothing(project, env, engine_url, data_dir)

    assert code == 2 and planned["pending"] == [FILL.revision]
    (step,) = planned["steps"]
    (job,) = [change for change in step["tables"] if change["table"] == "job"]
    assert job["columns_added"] == ["fixture_priority"]
    fills = [s for s in step["statements"] if s["sql"].startswith(FILL_STATEMENT)]
    assert len(fills) == 1 and fills[0]["count"] >= 2 and fills[0]["seconds"] >= 0
    text = plan_text(project, env).stdout
    assert text.count(FILL_STATEMENT) == 1
    assert f"{fills[0]['count']}x {FILL_STATEMENT}" in text

    result = upgrade(project, env)
    assert result.returncode == 0, result.stderr
    assert job["rows_changed"] == rows_with_a_value_in(engine_url, "job", ["fixture_priority"]) > 0
    assert fills[0]["count"] == -(-job["rows_changed"] // FILL_BATCH)


def test_column_added_with_a_default_counts_every_row(
    engine_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    """Only ALTER TABLE named the table: counted from the added column, no row comparison."""
    project, env = at_head_with(engine_url, data_dir, project_with(tmp_path, [DEFAULTED]))
    code, planned = plan_changing_nothing(project, env, engine_url, data_dir)
    assert code == 2
    (job,) = [change for change in planned["steps"][0]["tables"] if change["table"] == "job"]
    assert job["columns_added"] == ["fixture_attempts"] and not job["rebuilt"]
    result = upgrade(project, env)
    assert result.returncode == 0, result.stderr
    assert job["rows_changed"] == rows_with_a_value_in(engine_url, "job", ["fixture_attempts"]) > 0
    assert job["rows_changed"] == row_counts(engine_url)["job"]


def test_revision_before_an_autocommit_block_is_planned_as_the_upgrade_runs_it(
    engine_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    project, env = at_head_with(
        engine_url, data_dir, project_with(tmp_path, [FILL, OUTSIDE_TRANSACTION])
    )

    code, planned = plan_changing_nothing(project, env, engine_url, data_dir)

    assert code == 2 and planned["outcome"] == "upgrade", planned["summary"]
    assert planned["pending"] == [FILL.revision, OUTSIDE_TRANSACTION.revision]
    assert [step["revision"] for step in planned["steps"]] == planned["pending"]
    result = upgrade(project, env)
    assert result.returncode == 0, result.stderr
    assert applied_revisions(engine_url)[-2:] == planned["pending"]
    for table, rows in last_rows_after(planned).items():
        assert row_counts(engine_url)[table] == rows, table
    (job,) = [change for change in planned["steps"][0]["tables"] if change["table"] == "job"]
    assert job["rows_changed"] == rows_with_a_value_in(engine_url, "job", ["fixture_priority"])


def test_service_can_keep_writing_while_sqlite_is_planned(data_dir: Path) -> None:
    """The plan holds a read lock only while it copies; a writer then goes on at once."""
    copy_release("v1.16.1.db", data_dir)
    env = upgrade_environment(REPO, sqlite_database(data_dir), data_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.main", "plan", "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = sqlite3.connect(data_dir / "anibridge_jobs.db", timeout=10)
    try:
        for number in range(20):
            writer.execute(
                "UPDATE job SET message = ? WHERE rowid = 1", (f"written during the plan {number}",)
            )
            writer.commit()
    finally:
        writer.close()
    output, errors = process.communicate(timeout=120)
    assert process.returncode == 2, errors
    assert json.loads(output)["outcome"] == "upgrade"


def test_invalid_index_cleanup_is_not_run_by_the_plan(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    """The upgrade drops an index a failed concurrent build left, outside a transaction."""
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    engine = engine_for(postgres_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection, pytest.raises(sa.exc.IntegrityError):
        connection.execute(sa.text("CREATE UNIQUE INDEX CONCURRENTLY ix_broken ON job (status)"))
    engine.dispose()
    code, planned = plan_changing_nothing(project, env, postgres_url, data_dir)
    assert code == 2 and planned["outcome"] == "upgrade"
    assert planned["pending"] == [DATA_CHANGE.revision]
    assert planned["not_copied"] == ["invalid index ix_broken on job"]


def test_plan_names_what_the_copy_left_out(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    """A trigger the upgrade would fire is not on the copy: the plan says it ran without it."""
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    run_sql(
        postgres_url,
        "CREATE FUNCTION stamp_job() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN NEW.message := 'stamped'; RETURN NEW; END $$",
        "CREATE TRIGGER job_stamp BEFORE UPDATE ON job FOR EACH ROW EXECUTE FUNCTION stamp_job()",
        "CREATE MATERIALIZED VIEW job_counts AS SELECT status, count(*) FROM job GROUP BY status",
    )
    left_out = [
        "function stamp_job()",
        "materialized view job_counts",
        "trigger job_stamp on job",
    ]
    code, planned = plan_changing_nothing(project, env, postgres_url, data_dir)
    assert code == 2 and planned["not_copied"] == left_out
    text = plan_text(project, env).stdout
    assert f"rehearsed without: {', '.join(left_out)} (not copied;" in text


@pytest.mark.timeout(120)
def test_service_transaction_on_the_live_database_does_not_hold_the_plan(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    """The upgrade's ACCESS EXCLUSIVE is taken on the copy: a service writing job is no obstacle.

    Rehearsed on the live database, the plan's ALTER TABLE waited for this
    transaction until lock_timeout, and was tried again.
    """
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    engine = engine_for(postgres_url)
    with engine.connect() as service:
        service.execute(sa.text("UPDATE job SET progress = progress"))
        code, planned = plan(project, {**env, "DB_MIGRATION_TABLE_LOCK_TIMEOUT": "1"})
        service.rollback()
    engine.dispose()
    assert code == 2 and planned["pending"] == [DATA_CHANGE.revision]


@pytest.mark.timeout(120)
def test_table_locked_on_the_live_database_stops_the_copy_in_one_line(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    """DDL holding job: the snapshot waits lock_timeout for it, then says so; no copy is left."""
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [DATA_CHANGE]))
    engine = engine_for(postgres_url)
    with engine.connect() as holder:
        holder.execute(sa.text("LOCK TABLE job IN ACCESS EXCLUSIVE MODE"))
        result = plan_text(project, {**env, "DB_MIGRATION_TABLE_LOCK_TIMEOUT": "1"})
        holder.rollback()
    engine.dispose()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    notice, line = result.stderr.splitlines()
    assert SCRATCH_NAMED.search(notice)
    assert line.startswith("anibridge: error: could not copy the database for the plan: ")


def test_unknown_postgres_database_is_named_as_status_names_it(
    postgres_url: URL, data_dir: Path
) -> None:
    env = upgrade_environment(REPO, postgres_url.set(database="anibridge_no_such"), data_dir)
    planned = plan_text(REPO, env)
    status = run(REPO, env, "-m", "app.main", "status")
    assert planned.returncode == 1 and planned.stdout == "", planned.stderr
    assert planned.stderr == status.stderr
    assert planned.stderr.startswith("anibridge: error: cannot use the database ")


def test_postgres_refused_schema_gets_the_upgrades_own_sentence(
    postgres_url: URL, data_dir: Path
) -> None:
    at_revision(postgres_url, data_dir, BASELINE)
    run_sql(
        postgres_url,
        f"DROP TABLE alembic_version, {HISTORY_TABLE}",
        "ALTER TABLE job ADD COLUMN note VARCHAR",
    )
    env = upgrade_environment(REPO, postgres_url, data_dir)
    code, planned = plan_changing_nothing(REPO, env, postgres_url, data_dir)
    assert code == 1 and planned["outcome"] == "refused"
    assert planned["refusal"] == upgrade_error(upgrade(REPO, env))


def test_role_that_may_not_create_databases_plans_in_a_scratch_schema(
    postgres_url: URL, data_dir: Path, tmp_path: Path
) -> None:
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [FILL]))
    _, as_owner = plan(project, env)
    role = f"anibridge_plan_role_{uuid.uuid4().hex[:8]}"
    run_sql(
        postgres_url,
        "REVOKE ALL ON SCHEMA public FROM PUBLIC",
        f"CREATE ROLE {role} LOGIN NOCREATEDB",
        f'GRANT CREATE ON DATABASE "{postgres_url.database}" TO {role}',
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    )
    limited = upgrade_environment(project, postgres_url.set(username=role), data_dir)
    try:
        unchanged = unchanged_check(postgres_url, data_dir)
        no_usage = run(project, limited, "-m", "app.main", "plan")
        run_sql(postgres_url, f"GRANT USAGE ON SCHEMA public TO {role}")
        result = run(project, limited, *PLAN_JSON)
        unchanged()
    finally:
        run_sql(postgres_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    assert no_usage.returncode == 1, no_usage.stdout
    assert no_usage.stderr.splitlines()[-1] == (
        f"anibridge: error: user {role} may use no schema on its search_path in the database "
        f"{postgres_url.database}; grant it USAGE on the application's schema"
    )
    assert_scratch_copy_gone(env, no_usage.stderr)
    assert "a scratch schema anibridge_plan_" in result.stderr, result.stderr
    assert_scratch_copy_gone(env, result.stderr)
    assert result.returncode == 2, result.stderr
    planned = json.loads(result.stdout)
    assert planned["pending"] == as_owner["pending"]
    assert [step["tables"] for step in planned["steps"]] == [
        step["tables"] for step in as_owner["steps"]
    ]


SLEEPING = InjectedRevision(
    "5eeb00000001", "Take a while", '    op.execute("SELECT pg_sleep(60)")\n'
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopped_plan_drops_its_copy_and_says_so(
    postgres_url: URL, data_dir: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    project, env = at_head_with(postgres_url, data_dir, project_with(tmp_path, [FILL, SLEEPING]))
    unchanged = unchanged_check(postgres_url, data_dir)
    process = subprocess.Popen(
        [sys.executable, *PLAN_JSON],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_in_a_terminal,
    )
    notice = process.stderr.readline()
    wait_until_sleeping(postgres_url)
    process.send_signal(stop)
    output, errors = process.communicate(timeout=60)
    assert process.returncode == 1 and output == "", errors
    assert errors == "anibridge: error: the plan was interrupted; its scratch copy was dropped\n"
    assert_scratch_copy_gone(env, notice)
    unchanged()


def as_in_a_terminal() -> None:
    """Let Ctrl-C reach the plan as a shell's foreground job gets it.

    A suite started in the background (`make test &`) ignores SIGINT, and a
    process inherits that: Python then installs no KeyboardInterrupt handler.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_until_sleeping(url: URL, timeout_s: float = 60) -> None:
    """Until a session on the server runs the SLEEPING revision's statement."""
    engine = engine_for(url)
    deadline = time.monotonic() + timeout_s
    try:
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                found = connection.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE query = :sleeping"),
                    {"sleeping": "SELECT pg_sleep(60)"},
                ).scalar_one()
                connection.rollback()
                if found:
                    return
                time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("the plan's upgrade never reached the sleeping revision")


SCHEMA_FINGERPRINT = {
    "columns": "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
    "pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attidentity, a.attgenerated "
    "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
    "WHERE c.relnamespace = current_schema()::regnamespace AND a.attnum > 0 "
    "AND NOT a.attisdropped ORDER BY 1, 2",
    "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE connamespace = current_schema()::regnamespace ORDER BY 1",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes "
    "WHERE schemaname = current_schema() ORDER BY 1",
    "views": "SELECT viewname, definition FROM pg_views "
    "WHERE schemaname = current_schema() ORDER BY 1",
    "sequences": "SELECT sequencename, data_type::text, start_value, increment_by, last_value "
    "FROM pg_sequences WHERE schemaname = current_schema() ORDER BY 1",
    "owned": "SELECT s.relname, t.relname, d.refobjsubid FROM pg_depend d "
    "JOIN pg_class s ON s.oid = d.objid JOIN pg_class t ON t.oid = d.refobjid "
    "WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i') ORDER BY 1",
    "types": "SELECT t.typname, e.enumlabel FROM pg_type t JOIN pg_enum e "
    "ON e.enumtypid = t.oid ORDER BY 1, e.enumsortorder",
}


def schema_fingerprint(url: URL) -> dict[str, Any]:
    """What the scratch copy must have as the live database has it, rows as digests."""
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            found = {
                name: [tuple(row) for row in connection.execute(sa.text(query))]
                for name, query in SCHEMA_FINGERPRINT.items()
            }
            tables = sa.inspect(connection).get_table_names()
            found["rows"] = {
                table: tuple(
                    connection.execute(
                        sa.text(
                            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                            f"t::text), '')) FROM \"{table}\" t"
                        )
                    ).one()
                )
                for table in tables
            }
            schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one()
    finally:
        engine.dispose()
    unqualified = f" ON {schema}."
    found["indexes"] = [
        (name, definition.replace(unqualified, " ON ")) for name, definition in found["indexes"]
    ]
    return found


def test_scratch_copy_has_every_object_row_and_sequence_value_of_the_live_database(
    postgres_url: URL, data_dir: Path
) -> None:
    from app.migration.scratch_copy import scratch_copy

    at_revision(postgres_url, data_dir, "head")
    run_sql(
        postgres_url,
        "CREATE TYPE mood AS ENUM ('calm', 'busy')",
        "CREATE TABLE note (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "job_id varchar REFERENCES job (id) ON DELETE CASCADE, mood mood NOT NULL DEFAULT 'calm', "
        'body text COLLATE "C" CHECK (length(body) < 100), '
        "size integer GENERATED ALWAYS AS (length(body)) STORED)",
        "INSERT INTO note (job_id, body) SELECT id, status FROM job WHERE status = 'failed'",
        "CREATE INDEX ix_note_busy ON note (lower(body)) WHERE mood = 'busy'",
        "CREATE SEQUENCE ticket START 7 INCREMENT 3",
        "SELECT nextval('ticket')",
        "CREATE VIEW failed_jobs AS SELECT id, message FROM job WHERE status = 'failed'",
    )
    live = schema_fingerprint(postgres_url)
    notices: list[str] = []
    with scratch_copy(postgres_url, 5, notices.append) as copy:
        assert schema_fingerprint(copy.url) == live
        assert copy.url.database != postgres_url.database
        assert copy.left_out == []
    assert_scratch_copy_gone(
        {"DATABASE_URL": postgres_url.render_as_string(False)}, " ".join(notices)
    )
    assert schema_fingerprint(postgres_url) == live


def test_a_step_of_many_batches_prints_at_most_a_screen() -> None:
    """A fill of 1,000,000 rows in batches, whether its statements repeat or differ by key."""
    from app.migration.plan import SHOWN_STATEMENTS, render_step
    from app.migration.rehearsal import StatementRun, StepReport

    repeated = StatementRun(
        "UPDATE job SET fixture_priority = 0 WHERE fixture_priority IS NULL LIMIT 1000", 1000
    )
    by_key = [
        StatementRun(f"UPDATE job SET fixture_priority = 0 WHERE id <= {n}", 1) for n in range(1000)
    ]
    for statements in ([repeated], by_key):
        step = StepReport("upgrade", "f111a0000001", "Fill", 1.0, statements=statements)
        lines = render_step(1, step)
        assert len(lines) <= SHOWN_STATEMENTS + 3 <= 24, lines
    assert render_step(1, StepReport("upgrade", "r", "m", 0.0, statements=[repeated]))[-1] == (
        f"     1,000x {repeated.sql} (0.000 s)"
    )
    assert render_step(1, step)[-1] == (
        f"     ... {1000 - SHOWN_STATEMENTS} more distinct statements, run "
        f"{1000 - SHOWN_STATEMENTS} times: see --json"
    )
