"""Measure, on PostgreSQL, what each revision of tests/data/lock_corpus does to a
busy table, and compare the lint's verdicts (and squawk's alone) with it.

Each revision runs through Alembic (its own transaction, autocommit blocks
committing as they do in an upgrade) on `job` (ROWS rows, an index) and `anime`
(1,000 rows). After each statement run in the revision's transaction that
read or wrote at least SLOW rows (pg_stat_xact_user_tables of the upgrade's
session), a second session tries to read and to write each table with a short
lock_timeout, and pg_locks shows what the upgrade holds. A revision is a
hazard when, measured:

* a second session waited its lock_timeout out after such a slow statement
  (a lock that stops reads or writes, held while rows are worked through);
* a table's file node changed (PostgreSQL rewrote it);
* it failed on tables with rows;
* a read the previous release makes (every old column by name) fails after it;
* run again after failing past its autocommit block (whose statements stay
  committed), it fails.

`python -m tests.lock_corpus` prints the figures docs/replicas.md quotes.
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import URL

from app.migration.authoring.lint import lint_revision, recorded_upgrade
from app.migration.authoring.squawk import DROPPED, squawk_findings, squawk_script

CORPUS = Path(__file__).parent / "data" / "lock_corpus"
ROWS = 20_000
SLOW = ROWS // 2
PROBE_LOCK_TIMEOUT = "100ms"
TIMEOUT_RULES = ("require-lock-timeout", "require-statement-timeout", "require-timeout-settings")
TABLES = ("job", "anime")
SCHEMA = f"""
DROP SCHEMA public CASCADE;
CREATE SCHEMA public;
CREATE TABLE anime (id integer PRIMARY KEY, title text NOT NULL);
INSERT INTO anime SELECT g, 'anime ' || g FROM generate_series(1, 1000) g;
CREATE TABLE job (
    id serial PRIMARY KEY, anime_id integer, status varchar(20), message varchar(50),
    eta integer, price numeric(10, 2), note text, created_at timestamp DEFAULT now()
);
INSERT INTO job (anime_id, status, message, eta, price)
    SELECT mod(g, 1000) + 1, 'queued', 'message ' || g, g, g / 100.0
    FROM generate_series(1, {ROWS}) g;
CREATE INDEX ix_job_anime_id ON job (anime_id);
"""
OLD_READS = {
    "job": "SELECT id, anime_id, status, message, eta, price, note, created_at FROM job LIMIT 1",
    "anime": "SELECT id, title FROM anime LIMIT 1",
}
ROW_WORK = """
SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0) + n_tup_ins + n_tup_upd
                    + n_tup_del), 0)
FROM pg_stat_xact_user_tables
"""
PROBES = {
    "read": "SELECT 1 FROM {table} LIMIT 1",
    "write": "UPDATE {table} SET id = id WHERE id <= 2",  # an odd and an even row
}


class InjectedFailure(RuntimeError):
    """Raised at the end of upgrade(), after its autocommit block committed."""


@dataclass
class Measured:
    failed: str = ""
    rewritten: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    old_reads_failing: list[str] = field(default_factory=list)
    rerun_failed: str = ""
    commits_early: bool = False

    @property
    def hazard(self) -> bool:
        return bool(
            self.failed
            or self.rewritten
            or self.blocked
            or self.old_reads_failing
            or self.rerun_failed
        )


class Watch:
    """Listens to the upgrade's statements and probes after each slow one in its transaction."""

    def __init__(self, engine: sa.Engine, probe: sa.Engine, measured: Measured) -> None:
        self.probe, self.measured = probe, measured
        self.work_before = 0
        sa.event.listen(engine, "before_cursor_execute", self.before)
        sa.event.listen(engine, "after_cursor_execute", self.after)

    def before(self, _conn, cursor, *_args) -> None:
        if not cursor.connection.autocommit:
            self.work_before = row_work(cursor.connection)

    def after(self, _conn, cursor, statement: str, *_args) -> None:
        if cursor.connection.autocommit:
            self.measured.commits_early = True
            return
        work = row_work(cursor.connection) - self.work_before
        if work < SLOW:
            return
        waited = list(self.waits())
        if waited:
            locks = held_locks(self.probe, cursor.connection.info.backend_pid)
            self.measured.blocked.append(
                f"{' '.join(statement.split())[:70]}: {work} rows worked through while "
                f"{', '.join(waited)} waited (upgrade holds {locks})"
            )

    def waits(self) -> Iterator[str]:
        """Each read or write of a table the second session could not do within its
        lock_timeout."""
        for table in TABLES:
            for kind, sql in PROBES.items():
                with self.probe.connect() as connection:
                    try:
                        connection.execute(sa.text(sql.format(table=table)))
                    except sa.exc.OperationalError as exc:
                        if getattr(exc.orig, "sqlstate", "") == "55P03":
                            yield f"{kind} {table}"
                    connection.rollback()


def row_work(dbapi_connection) -> int:
    """Rows read or written by the upgrade's transaction so far."""
    return int(dbapi_connection.execute(ROW_WORK).fetchone()[0])


def held_locks(probe: sa.Engine, pid: int) -> list[str]:
    with probe.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT relation::regclass::text || ' ' || mode FROM pg_locks "
                "WHERE pid = :pid AND locktype = 'relation' AND granted ORDER BY 1"
            ),
            {"pid": pid},
        )
        return [row[0] for row in rows if not row[0].startswith("pg_") and not row[0][0].isdigit()]


def run_upgrade(engine: sa.Engine, script: Script, fail_at_end: bool = False) -> str:
    """Run the revision's upgrade() as an upgrade does; its error's first line, or ''."""
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            with context.begin_transaction(), Operations.context(context):
                script.module.upgrade()
                if fail_at_end:
                    raise InjectedFailure("a later step failed")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return ""


def file_nodes(engine: sa.Engine) -> dict[int, tuple[str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT oid, relname, relfilenode FROM pg_class "
                "WHERE relname = ANY(:names) AND relnamespace = 'public'::regnamespace"
            ),
            {"names": list(TABLES)},
        )
        return {oid: (name, node) for oid, name, node in rows}


def rewritten_tables(engine: sa.Engine, before: dict[int, tuple[str, int]]) -> list[str]:
    with engine.connect() as connection:
        after = dict(connection.execute(sa.text("SELECT oid, relfilenode FROM pg_class")).all())
    return [name for oid, (name, node) in before.items() if after.get(oid, node) != node]


def failing_old_reads(engine: sa.Engine) -> list[str]:
    failing = []
    for table, sql in OLD_READS.items():
        with engine.connect() as connection:
            try:
                connection.execute(sa.text(sql))
            except sa.exc.DBAPIError as exc:
                failing.append(f"{table}: {str(exc.orig).splitlines()[0]}")
    return failing


def fresh_tables(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(SCHEMA)


def measure(url: URL, script: Script) -> Measured:
    """What the revision does on tables with rows, watched from a second session."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    probe = sa.create_engine(
        url,
        poolclass=sa.pool.NullPool,
        connect_args={"options": f"-c lock_timeout={PROBE_LOCK_TIMEOUT}"},
    )
    measured = Measured()
    try:
        fresh_tables(engine)
        before = file_nodes(engine)
        watched = sa.create_engine(url, poolclass=sa.pool.NullPool)
        Watch(watched, probe, measured)
        measured.failed = run_upgrade(watched, script)
        watched.dispose()
        measured.rewritten = rewritten_tables(engine, before)
        measured.old_reads_failing = failing_old_reads(probe)
        if measured.commits_early:
            fresh_tables(engine)
            run_upgrade(engine, script, fail_at_end=True)
            measured.rerun_failed = run_upgrade(engine, script)
    finally:
        engine.dispose()
        probe.dispose()
    return measured


def corpus() -> list[Script]:
    return sorted(ScriptDirectory(str(CORPUS)).walk_revisions(), key=lambda s: s.revision)


def lint_flags(script: Script) -> bool:
    return bool(lint_revision(script))


def squawk_flags(script: Script, excluded: tuple[str, ...]) -> bool:
    """Whether squawk, without the `excluded` rules, finds anything in the revision's SQL."""
    sql, _owners = squawk_script(recorded_upgrade(script).statements)
    return bool(squawk_findings(sql, excluded=excluded))


def figures(url: URL) -> str:
    rows = [(script, measure(url, script).hazard) for script in corpus()]
    hazards = sum(hazard for _script, hazard in rows)
    lines = [f"{len(rows)} revisions, {hazards} measured hazards, {len(rows) - hazards} safe"]
    verdicts = {
        "lint": lint_flags,
        "squawk alone, default rules but timeouts": lambda s: squawk_flags(s, TIMEOUT_RULES),
        "squawk alone, the lint's selection": lambda s: squawk_flags(s, tuple(DROPPED)),
    }
    for name, verdict in verdicts.items():
        flagged = [(script, hazard) for script, hazard in rows if verdict(script)]
        caught = [script.revision for script, hazard in flagged if hazard]
        false = [script.revision for script, hazard in flagged if not hazard]
        missed = sorted({s.revision for s, h in rows if h} - set(caught))
        lines.append(
            f"{name}: caught {len(caught)} of {hazards} (missed: {', '.join(missed) or '-'}); "
            f"false alarms {len(false)} of {len(rows) - hazards} ({', '.join(false) or '-'})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(figures(sa.make_url(sys.argv[1])))
