"""Every safe pattern the docs give, as they write it, on a busy PostgreSQL table.

The patterns of docs/migrations.md ("PostgreSQL: locks, timeouts and
autocommit blocks", "A new NOT NULL column", "PostgreSQL lock hazards") and
docs/replicas.md are their `<!-- docs-example: NAME -->` blocks, planted after
the real head in a copy of the project (tests/test_patterns.py's `DocsChain`):
the docs are the one source, the test keeps no copy. For each pattern:

* timed: `alembic upgrade head`'s code runs the pattern on `job` and
  `clienttask` holding rows while a second session (autocommit,
  `lock_timeout` PROBE_LOCK_TIMEOUT) reads and writes them without pause; no
  probe statement may run out of its lock_timeout, and the longest one is
  reported (docs/migrations.md, "Measured: the longest block"). The harmful
  form of one pattern (the foreign key validated in the transaction that added
  it) fails the same check;
* run again after a failure at any point: the upgrade fails right after each
  statement of the pattern in turn (an event listener raises once the Nth has
  run, committed or not as the upgrade left it), then the next run must
  succeed and leave the rows and the schema exactly as one clean run does.
  Failures after a SELECT are left out: they leave the database as the failure
  after the statement before it does;
* linted: the lint finds nothing in it.

Each run starts from a database cloned from a template (CREATE DATABASE ...
TEMPLATE), set up once: the real chain at head, then the rows.
"""

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

import app.migration.patterns
from app.migration.authoring.lint import lint_revisions
from app.migration.revisions import alembic_config, current_heads
from tests.chain import copy_project
from tests.conftest import postgres_server_url, settings_for
from tests.test_patterns import (
    MIGRATIONS_GUIDE,
    PRIORITY,
    REPLICAS_GUIDE,
    DocsChain,
    docs_examples,
    insert_jobs,
    plain_connection,
    project_config,
    real_head,
    scalar,
)

pytestmark = pytest.mark.timeout(300)

PROBE_LOCK_TIMEOUT = "100ms"
PROBE_PAUSE_S = 0.005
RERUN_ROWS = 2_000
RERUN_BATCH = 1_000
"""Batches of a fixed size in the failure runs, so every run sends the same statements."""

JOB_ROWS = """
INSERT INTO job (id, status, progress, downloaded_bytes, total_bytes, eta, message, result_path,
                 source_site, created_at, updated_at)
SELECT 'f' || lpad(to_hex(g), 31, '0'),
       (ARRAY['queued', 'downloading', 'completed', 'failed', 'cancelled'])[g % 5 + 1],
       g % 101, g * 1024, CASE WHEN g % 7 > 0 THEN g * 2048 END, NULLIF(g % 3600, 0),
       CASE WHEN g % 11 > 0 THEN 'Folge ' || g END,
       CASE WHEN g % 5 > 0 THEN '/downloads/Show ' || g % 500 || '/E' || g || '.mkv' END,
       'aniworld.to', timestamptz '2024-05-01 12:30+00' + g * interval '1 second',
       timestamptz '2024-05-01 12:35+00' + g * interval '1 second'
FROM generate_series(1, :rows) AS g
"""
TASK_ROWS = """
INSERT INTO clienttask (hash, name, slug, season, episode, language, job_id, added_on, state)
SELECT id, 'Folge', 'show', 1, 1, 'German Dub', id, created_at, 'queued' FROM job
"""
ROW_DIGESTS = {
    table: f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.{key}), '')) "
    f"FROM {table} AS t"
    for table, key in (("job", "id"), ("clienttask", "hash"))
}
SCHEMA = {
    "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
    "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), "
    "convalidated FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "indexes": "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1",
    "version": "SELECT version_num FROM alembic_version",
}
PATTERN_STATEMENT = re.compile(r"\b(?:job|clienttask)\b", re.I)
BOOKKEEPING = re.compile(r"alembic_version|anibridge_|pg_|information_schema", re.I)


@dataclass(frozen=True)
class Pattern:
    """A safe pattern: docs examples run in order, the tables it works on, rows when timed,
    and what is true on PostgreSQL once it has run."""

    name: str
    chain: DocsChain
    tables: tuple[str, ...]
    rows: int
    """Jobs (and as many tasks) when timed: fewer for a pattern that fills every row."""
    done: str
    """A query answering true once the pattern has done what it says."""


def chain(doc: str, *examples: str, number: int) -> DocsChain:
    return DocsChain(
        doc, tuple((name, f"5afe{number:04x}{step:04x}") for step, name in enumerate(examples, 1))
    )


def validated(constraint: str) -> str:
    return f"SELECT bool_and(convalidated) FROM pg_constraint WHERE conname = '{constraint}'"


MANY, FEWER = 100_000, 20_000
HARMFUL_ROWS = 400_000
"""Rows for the harmful variant: its VALIDATE must outlast the probe's lock_timeout on a fast,
idle machine too (100,000 rows took 90-200 ms here, 400,000 several times that)."""
FILLED_PRIORITY = f"SELECT bool_and(fixture_priority = {PRIORITY}) FROM job"
PATTERNS = (
    Pattern("index", MIGRATIONS_GUIDE, ("job",), FEWER, FILLED_PRIORITY),
    Pattern("expand (replicas)", REPLICAS_GUIDE, ("job",), FEWER, FILLED_PRIORITY),
    Pattern(
        "NOT NULL with a server default",
        chain("migrations.md", "not-null-server-default", number=3),
        ("job",),
        MANY,
        "SELECT bool_and(fixture_priority = 0) FROM job",
    ),
    Pattern(
        "NOT NULL: add, fill, then set",
        chain("migrations.md", "not-null-add", "not-null-set", number=4),
        ("job",),
        FEWER,
        "SELECT bool_and(fixture_seen_at = updated_at) AND bool_and(attnotnull) "
        "FROM job, pg_attribute WHERE attrelid = 'job'::regclass AND attname = 'fixture_seen_at'",
    ),
    Pattern(
        "foreign key",
        chain("migrations.md", "foreign-key", number=5),
        ("job", "clienttask"),
        MANY,
        validated("fk_clienttask_job_id_job"),
    ),
    Pattern(
        "check",
        chain("migrations.md", "check", number=6),
        ("job",),
        MANY,
        validated("ck_job_progress_range"),
    ),
    Pattern(
        "unique",
        chain("migrations.md", "unique", number=7),
        ("job",),
        MANY,
        "SELECT bool_and(contype = 'u') FROM pg_constraint WHERE conname = 'uq_job_message'",
    ),
    Pattern(
        "type change",
        chain("migrations.md", "type-change", number=8),
        ("job",),
        FEWER,
        "SELECT bool_and(eta_ms IS NOT DISTINCT FROM eta * 1000) FROM job",
    ),
    Pattern(
        "rename",
        chain("migrations.md", "rename-expand", "rename-contract", number=9),
        ("job",),
        FEWER,
        # the rows' result_path: NULL for every fifth (JOB_ROWS)
        f"SELECT count(output_path) = {RERUN_ROWS - RERUN_ROWS // 5} FROM job",
    ),
)
BY_NAME = {pattern.name: pattern for pattern in PATTERNS}


def planted(pattern: Pattern) -> set[str]:
    return {revision for _name, revision in pattern.chain.revisions}


def validated_in_its_transaction(source: str) -> str:
    """The harmful form: the block that should leave the transaction stays in it."""
    return "import contextlib\n" + source.replace(
        "outside_transaction()", "contextlib.nullcontext(False)"
    )


# --- databases ------------------------------------------------------------------


@dataclass
class Databases:
    """Templates with rows, and clones of them that the test drops at its end."""

    admin: sa.Engine
    templates: dict[int, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)

    def create(self, template: str | None = None) -> URL:
        name = f"anibridge_safe_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
        self.created.append(name)
        return postgres_server_url().set(database=name)

    def template(self, rows: int, data_dir: Path) -> str:
        """A database at the real head with `rows` jobs, each with a task."""
        if rows not in self.templates:
            url = self.create()
            command.upgrade(alembic_config(settings=settings_for(url, data_dir)), "head")
            with plain_connection(url) as connection:
                connection.execute(sa.text(JOB_ROWS), {"rows": rows})
                connection.execute(sa.text(TASK_ROWS))
                connection.commit()
            vacuum = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with vacuum.connect() as connection:
                connection.execute(sa.text("VACUUM ANALYZE"))  # the planner's figures, as live
            vacuum.dispose()
            self.templates[rows] = url.database
        return self.templates[rows]

    def clone(self, rows: int, data_dir: Path) -> URL:
        return self.create(self.template(rows, data_dir))

    def drop(self, url: URL) -> None:
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        self.created.remove(url.database)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(postgres_server_url().set(database=name))


@pytest.fixture(scope="module")
def databases(postgres_admin: sa.Engine) -> Iterator[Databases]:
    found = Databases(postgres_admin)
    yield found
    found.drop_all()


def snapshot(url: URL) -> dict[str, object]:
    """Row counts and digests first, then the schema as the catalogue shows it."""
    with plain_connection(url) as connection:
        rows = {
            table: tuple(connection.execute(sa.text(sql)).one())
            for table, sql in ROW_DIGESTS.items()
        }
        schema = {
            part: [tuple(row) for row in connection.execute(sa.text(sql))]
            for part, sql in SCHEMA.items()
        }
    return {"rows": rows, **schema}


def planted_project(
    directory: Path, pattern: Pattern, harm: Callable[[str], str] | None = None
) -> Path:
    project = copy_project(directory / "project")
    pattern.chain.plant(project)
    if harm is not None:
        for _name, revision in pattern.chain.revisions:
            [path] = (project / "migrations" / "versions").glob(f"*-{revision}_*.py")
            path.write_text(harm(path.read_text()))
    return project


# --- timed, with a second session reading and writing ------------------------------


@dataclass
class Probe:
    """A second session reading and updating a row of each table, every statement with a
    short lock_timeout, round after round (PROBE_PAUSE_S apart) until stopped."""

    url: URL
    tables: tuple[str, ...]
    longest: float = 0.0
    statements: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)

    def sql(self, connection: psycopg.Connection) -> list[tuple[str, tuple]]:
        keys = {"job": "id", "clienttask": "hash"}
        probes = []
        for table in self.tables:
            key = keys[table]
            middle = connection.execute(
                f"SELECT {key} FROM {table} ORDER BY {key} "
                f"OFFSET (SELECT count(*) / 2 FROM {table}) LIMIT 1"
            ).fetchone()[0]
            probes.append((f"SELECT 1 FROM {table} LIMIT 1", ()))
            column = "status" if table == "job" else "state"
            probes.append((f"UPDATE {table} SET {column} = {column} WHERE {key} = %s", (middle,)))
        return probes

    def run(self) -> None:
        conninfo = self.url.set(drivername="postgresql").render_as_string(False)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"SET lock_timeout = '{PROBE_LOCK_TIMEOUT}'")
            probes = self.sql(connection)
            self.started.set()
            while not self.stop.is_set():
                for statement, params in probes:
                    began = time.monotonic()
                    try:
                        connection.execute(statement, params)
                    except psycopg.Error as exc:
                        self.failures.append(f"{statement}: {exc}".splitlines()[0])
                    self.longest = max(self.longest, time.monotonic() - began)
                    self.statements += 1
                time.sleep(PROBE_PAUSE_S)


@contextmanager
def probing(url: URL, tables: tuple[str, ...]) -> Iterator[Probe]:
    probe = Probe(url, tables)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    assert probe.started.wait(10), "the probe session did not start"
    try:
        yield probe
    finally:
        probe.stop.set()
        thread.join(10)


@dataclass(frozen=True)
class Timed:
    pattern: str
    rows: int
    upgrade_s: float
    longest_probe_ms: float
    probes: int
    failures: list[str]

    def line(self) -> str:
        return (
            f"{self.pattern}: {self.rows} rows, upgrade {self.upgrade_s:.2f} s, "
            f"longest probe {self.longest_probe_ms:.0f} ms over {self.probes} probe statements, "
            f"{len(self.failures)} failed"
        )


def timed_upgrade(
    databases: Databases, tmp_path: Path, pattern: Pattern, harm: Callable[[str], str] | None = None
) -> Timed:
    url = databases.clone(pattern.rows, tmp_path / "template-data")
    project = planted_project(tmp_path, pattern, harm)
    config = project_config(project, settings_for(url, tmp_path / "data"))
    with probing(url, pattern.tables) as probe:
        began = time.monotonic()
        command.upgrade(config, "head")
        took = time.monotonic() - began
        time.sleep(0.05)
    databases.drop(url)
    timed = Timed(
        pattern.name, pattern.rows, took, probe.longest * 1000, probe.statements, probe.failures
    )
    print(timed.line())
    return timed


@pytest.mark.postgres
@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_pattern_never_blocks_a_second_session(
    databases: Databases, tmp_path: Path, name: str
) -> None:
    timed = timed_upgrade(databases, tmp_path, BY_NAME[name])
    assert timed.failures == [], timed.line()
    assert timed.probes > 0


@pytest.mark.postgres
def test_validated_in_its_own_transaction_the_foreign_key_blocks_writes(
    databases: Databases, tmp_path: Path
) -> None:
    """The harmful form of the foreign key pattern (VALIDATE in the transaction of the ADD):
    the second session's writes run out of their lock_timeout, and the lint says why."""
    pattern = dataclasses.replace(BY_NAME["foreign key"], rows=HARMFUL_ROWS)
    timed = timed_upgrade(databases, tmp_path, pattern, validated_in_its_transaction)
    assert any("lock timeout" in failure for failure in timed.failures), timed.line()
    findings = lint_revisions(ScriptDirectory(str(tmp_path / "project" / "migrations")))
    keys = [finding.key for finding in findings if finding.revision in planted(pattern)]
    assert keys == ["validate_in_transaction clienttask.fk_clienttask_job_id_job"]


# --- run again after a failure at any point -----------------------------------------


class InjectedFailure(RuntimeError):
    """Raised by the test right after the Nth statement of the pattern ran."""


@contextmanager
def pattern_statements(fail_after: int | None = None) -> Iterator[list[str]]:
    """The statements the upgrade sends for the pattern (not its bookkeeping), SELECTs left
    out; with `fail_after`, raise once that many have run."""
    seen: list[str] = []

    def count(_connection, _cursor, statement, *_args) -> None:
        if not PATTERN_STATEMENT.search(statement) or BOOKKEEPING.search(statement):
            return
        if statement.lstrip().upper().startswith("SELECT"):
            return
        seen.append(statement)
        if len(seen) == fail_after:
            raise InjectedFailure(f"injected after statement {fail_after}: {statement}")

    sa.event.listen(sa.Engine, "after_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", count)


def first_difference(found: dict[str, object], clean: dict[str, object]) -> str:
    """The first part (rows before schema) where `found` differs from the clean run's."""
    for part, expected in clean.items():
        if found[part] != expected:
            return f"{part}: {found[part]!r} where a clean run has {expected!r}"
    return ""


def runs_after_each_failure(
    databases: Databases,
    pattern: Pattern,
    project: Path,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    """Fail the upgrade right after each of the pattern's statements in turn, run it again,
    and say where that run failed or ended other than a clean run does."""
    monkeypatch.setattr(app.migration.patterns, "FIRST_BATCH_ROWS", RERUN_BATCH)
    monkeypatch.setattr(app.migration.patterns, "next_batch_size", lambda size, _seconds: size)
    clean_url = databases.clone(RERUN_ROWS, data)
    with pattern_statements() as statements:
        command.upgrade(project_config(project, settings_for(clean_url, data)), "head")
    clean = snapshot(clean_url)
    done = scalar(clean_url, pattern.done)
    databases.drop(clean_url)
    assert statements, "the pattern sent no statement"
    assert done, f"after a clean run, not true: {pattern.done}"

    problems = []
    for number, statement in enumerate(statements, 1):
        url = databases.clone(RERUN_ROWS, data)
        config = project_config(project, settings_for(url, data))
        with pattern_statements(fail_after=number), pytest.raises(Exception) as failed:
            command.upgrade(config, "head")
        assert "injected after statement" in str(failed.value), failed.value
        try:
            command.upgrade(config, "head")
        except Exception as exc:  # noqa: BLE001 - any failure of the second run is the finding
            problems.append(f"after a failure after {statement!r}, the next run failed: {exc}")
        else:
            if difference := first_difference(snapshot(url), clean):
                problems.append(f"after a failure after {statement!r}, {difference}")
        databases.drop(url)
    return problems


@pytest.mark.postgres
@pytest.mark.parametrize("name", list(BY_NAME))
def test_after_a_failure_at_any_statement_the_next_run_finishes_it(
    databases: Databases, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows and schema as after one clean run, and the pattern lints clean."""
    pattern = BY_NAME[name]
    project = planted_project(tmp_path, pattern)
    findings = lint_revisions(ScriptDirectory(str(project / "migrations")))
    assert [str(finding) for finding in findings if finding.revision in planted(pattern)] == []
    assert (
        runs_after_each_failure(databases, pattern, project, tmp_path / "data", monkeypatch) == []
    )


def added_again_without_dropping(source: str) -> str:
    """The foreign key pattern without its DROP CONSTRAINT IF EXISTS before the ADD."""
    drop = re.compile(r"^ *op\.execute\(\"ALTER TABLE \w+ DROP CONSTRAINT IF EXISTS .*\n", re.M)
    assert drop.search(source), "the pattern has no DROP CONSTRAINT IF EXISTS any more"
    return drop.sub("", source)


@pytest.mark.postgres
def test_without_its_drop_if_exists_the_foreign_key_fails_the_run_after_a_failure(
    databases: Databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure once the ADD has committed (after the VALIDATE) makes every later run stop
    on "already exists"; the lint says so too (not_rerunnable)."""
    pattern = BY_NAME["foreign key"]
    project = planted_project(tmp_path, pattern, added_again_without_dropping)
    problems = runs_after_each_failure(databases, pattern, project, tmp_path / "data", monkeypatch)
    assert len(problems) == 1 and "already exists" in problems[0], problems
    findings = lint_revisions(ScriptDirectory(str(project / "migrations")))
    keys = [finding.key for finding in findings if finding.revision in planted(pattern)]
    assert keys == ["not_rerunnable clienttask.fk_clienttask_job_id_job"]


# --- both engines, both ways -----------------------------------------------------


def has_downgrades(pattern: Pattern) -> bool:
    examples = docs_examples(pattern.chain.doc)
    return all("def downgrade" in examples[name] for name, _revision in pattern.chain.revisions)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_the_pattern_upgrades_and_downgrades_a_database_with_rows(
    database_url: URL, tmp_path: Path, name: str
) -> None:
    """The same docs blocks on both engines (on SQLite `postgresql_*` options are ignored and
    the PostgreSQL-only steps skipped, as the blocks say): every job and task stays, up and,
    where the blocks have a downgrade, back down to the real head."""
    pattern = BY_NAME[name]
    project = planted_project(tmp_path, pattern)
    config = project_config(project, settings_for(database_url, tmp_path / "data"))
    command.upgrade(config, real_head())
    insert_jobs(database_url, RERUN_ROWS)
    with plain_connection(database_url) as connection:
        connection.execute(sa.text(TASK_ROWS))
        connection.commit()

    command.upgrade(config, "head")
    with plain_connection(database_url) as connection:
        assert current_heads(connection) == (pattern.chain.last,)
    if has_downgrades(pattern):
        command.downgrade(config, real_head())
        with plain_connection(database_url) as connection:
            assert current_heads(connection) == (real_head(),)

    assert scalar(database_url, "SELECT count(*) FROM job") == RERUN_ROWS
    assert scalar(database_url, "SELECT count(*) FROM clienttask") == RERUN_ROWS
