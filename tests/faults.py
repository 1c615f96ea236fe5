"""Helpers for the fault-injection tests (tests/test_faults.py).

The tests run the real upgrade as a separate process so it can be killed. They
work on a scratch copy of the project, so they can add revisions that are slow,
fail on purpose or rebuild tables, written the way the project's own revisions
are written. Databases are compared through snapshots: schema shape, revision
and every row.
"""

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from app.migration.adoption.schema_shape import TableShape, describe_schema
from app.migration.backup import PARTIAL_SUFFIX, list_backups
from tests.chain import InjectedRevision

REPO_ROOT = Path(__file__).resolve().parents[1]
UPGRADE_COMMANDS = {
    "alembic": ("-m", "alembic", "upgrade", "head"),
    "app.migrate": ("-m", "app.migrate"),
}
UPGRADE_TIMEOUT_S = 300
JOB_COLUMNS = (
    "id",
    "status",
    "progress",
    "downloaded_bytes",
    "total_bytes",
    "speed",
    "eta",
    "message",
    "result_path",
    "source_site",
    "created_at",
    "updated_at",
)
JOB_STATUSES = ("queued", "downloading", "completed", "failed", "cancelled")
SITES = ("aniworld.to", "s.to", "megakino")
SEED_TIME = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

# --- settings for long runs -------------------------------------------------


def env_int(name: str, default: int) -> int:
    """A trial count or size, overridable from the environment for long runs."""
    return int(os.environ.get(name, default))


def seeded_random(label: str) -> random.Random:
    """A random source seeded from FAULT_SEED (else fresh); prints the seed to reproduce a run."""
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{label}: FAULT_SEED={seed}")
    return random.Random(seed)


# --- a revision that fails after changing schema and rows -------------------

FAILING_BODY = """\
    op.create_table(
        "fault_audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("note", sa.String(), nullable=False),
    )
    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(sa.Column("fault_flag", sa.Integer(), nullable=True))
    op.execute("INSERT INTO fault_audit (id, note) VALUES (1, 'written before the failure')")
    op.execute("UPDATE job SET fault_flag = 1, status = 'failed'")
    op.execute("DELETE FROM clienttask")
    raise RuntimeError("injected failure after real DDL and data changes")
"""
FAILING = InjectedRevision("fa11ed000001", "Fail after changing schema and rows", FAILING_BODY)

# --- running the upgrade ----------------------------------------------------


def upgrade_environment(project: Path, url: URL, data_dir: Path) -> dict[str, str]:
    """The process environment of an upgrade: the copy's code, this URL, nothing inherited."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DB_") and key not in ("DATABASE_URL", "DATA_DIR", "LOG_LEVEL")
    }
    env.update(
        PYTHONPATH=str(project),
        PYTHONDONTWRITEBYTECODE="1",
        DATA_DIR=str(data_dir),
        DATABASE_URL=url.render_as_string(hide_password=False),
        LOG_LEVEL="info",
    )
    return env


def start_python(project: Path, env: dict[str, str], arguments: list[str]) -> subprocess.Popen:
    """The venv's Python in the scratch project, output and log lines merged."""
    return subprocess.Popen(
        [sys.executable, *arguments],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_upgrade(project: Path, env: dict[str, str], entry: str = "alembic") -> subprocess.Popen:
    return start_python(project, env, list(UPGRADE_COMMANDS[entry]))


@dataclass(frozen=True)
class Outcome:
    returncode: int
    output: str
    seconds: float


def finish(process: subprocess.Popen, started: float) -> Outcome:
    output, _ = process.communicate(timeout=UPGRADE_TIMEOUT_S)
    return Outcome(process.returncode, output, time.perf_counter() - started)


def run_upgrade(project: Path, env: dict[str, str], entry: str = "alembic") -> Outcome:
    started = time.perf_counter()
    return finish(start_upgrade(project, env, entry), started)


def run_and_kill(project: Path, env: dict[str, str], delay_s: float) -> Outcome:
    """Start an upgrade and SIGKILL it after `delay_s` (it may have finished by then)."""
    started = time.perf_counter()
    process = start_upgrade(project, env)
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    return finish(process, started)


STARTING_GATE = """
import runpy, sys, time
from pathlib import Path

import alembic.config, app.migration.guarded_run  # the slow imports happen before the gate

ready, gate, module, *arguments = sys.argv[1:]
Path(ready).touch()
while not Path(gate).exists():
    time.sleep(0.01)
sys.argv = [module, *arguments]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_concurrently(
    project: Path, env: dict[str, str], entries: list[str], gate_dir: Path
) -> list[Outcome]:
    """Run one upgrade per entry, all let through one gate at the same moment.

    Each process first imports its dependencies and waits at the gate, so the
    upgrades really overlap even on a loaded machine, where start-up alone
    would otherwise spread them out by seconds.
    """
    gate_dir.mkdir(parents=True, exist_ok=True)
    gate = gate_dir / "open"
    ready = [gate_dir / f"ready-{number}" for number in range(len(entries))]
    processes = [
        start_python(
            project, env, ["-c", STARTING_GATE, str(flag), str(gate), *UPGRADE_COMMANDS[entry][1:]]
        )
        for flag, entry in zip(ready, entries, strict=True)
    ]
    deadline = time.monotonic() + UPGRADE_TIMEOUT_S
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            break
        time.sleep(0.01)
    gate.touch()
    started = time.perf_counter()
    return [finish(process, started) for process in processes]


def applied_revisions(outputs: Iterable[str]) -> list[str]:
    """The revisions that Alembic reported running, over all outputs, in order."""
    applied = []
    for output in outputs:
        for line in output.splitlines():
            if "Running upgrade" in line:
                applied.append(line.split("->", 1)[1].split(",", 1)[0].strip())
    return applied


# --- seeded job rows --------------------------------------------------------


def seed_job_rows(count: int) -> Iterator[tuple[Any, ...]]:
    """`count` distinct job rows in JOB_COLUMNS order, the same on every call."""
    for number in range(count):
        created = SEED_TIME + timedelta(seconds=number)
        size = (number % 97 + 1) * 2**28
        yield (
            f"f{number:031x}",
            JOB_STATUSES[number % len(JOB_STATUSES)],
            float(number % 101),
            size // 2,
            size if number % 7 else None,
            1.5 * number if number % 3 else None,
            number % 3600 or None,
            f"Folge {number} – 進撃の巨人" if number % 11 else None,
            f"/downloads/Show {number % 500}/S01E{number % 24 + 1:02d}.mkv",
            SITES[number % len(SITES)],
            created,
            created + timedelta(minutes=5),
        )


def insert_jobs_sqlite(database: Path, count: int) -> None:
    """Fast bulk insert in one transaction, timestamps written as SQLAlchemy writes them."""
    rows = (
        (*row[:-2], *(stamp.strftime("%Y-%m-%d %H:%M:%S.%f") for stamp in row[-2:]))
        for row in seed_job_rows(count)
    )
    placeholders = ", ".join("?" for _ in JOB_COLUMNS)
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.executemany(
            f"INSERT INTO job ({', '.join(JOB_COLUMNS)}) VALUES ({placeholders})", rows
        )


def insert_jobs_postgres(url: URL, count: int) -> None:
    """Fast bulk insert with COPY."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        raw = engine.raw_connection()
        try:
            statement = f"COPY job ({', '.join(JOB_COLUMNS)}) FROM STDIN"
            with raw.cursor() as cursor, cursor.copy(statement) as copy:
                for row in seed_job_rows(count):
                    copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


# --- looking at a database --------------------------------------------------


@contextmanager
def connect(url: URL) -> Iterator[sa.Connection]:
    """A fresh connection that leaves nothing behind (no pool)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def alembic_versions(connection: sa.Connection) -> list[str]:
    if not sa.inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


POSTGRES_JOB_FINGERPRINT = (
    f"SELECT count(*), md5(string_agg(ROW({', '.join(JOB_COLUMNS)})::text, '|' ORDER BY id)) "
    "FROM job"
)


def job_fingerprint(connection: sa.Connection) -> tuple[int, str]:
    """Row count and a digest of every job row's released columns, in id order.

    PostgreSQL hashes on the server; SQLite has no hash function, so its rows
    are hashed here, read through the driver's cursor (SQLAlchemy's row
    processing would triple the time on the kill tests' tables).
    """
    if connection.dialect.name == "postgresql":
        count, digest = connection.execute(sa.text(POSTGRES_JOB_FINGERPRINT)).one()
        return count, digest or ""
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM job ORDER BY id")
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


@dataclass(frozen=True)
class DatabaseState:
    """What a kill must never break: the revision, the schema shape and the job rows."""

    versions: list[str]
    shape: dict[str, TableShape]
    jobs: tuple[int, str]


def database_state(url: URL) -> DatabaseState:
    with connect(url) as connection:
        return DatabaseState(
            alembic_versions(connection), describe_schema(connection), job_fingerprint(connection)
        )


def database_snapshot(url: URL) -> dict[str, Any]:
    """The schema shape and every row of every table (alembic_version included)."""
    with connect(url) as connection:
        tables = sa.inspect(connection).get_table_names()
        rows = {
            table: sorted(
                (tuple(row) for row in connection.execute(sa.text(f'SELECT * FROM "{table}"'))),
                key=repr,
            )
            for table in tables
        }
        return {"shape": describe_schema(connection), "rows": rows}


def sqlite_dump(database: Path) -> list[str]:
    """The file's logical content as SQL statements (schema and rows)."""
    with closing(sqlite3.connect(database)) as connection:
        return list(connection.iterdump())


def sqlite_integrity(database: Path) -> str:
    """`PRAGMA integrity_check`, read-write: opening rolls back a killed writer's hot journal."""
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def leftover_partials(backups_dir: Path) -> list[Path]:
    return sorted(backups_dir.glob(f"*{PARTIAL_SUFFIX}")) if backups_dir.exists() else []


def backups_of(database: Path) -> list[Path]:
    backups_dir = database.parent / "backups"
    return list_backups(backups_dir, database) if backups_dir.exists() else []


# --- scratch PostgreSQL databases -------------------------------------------


def postgres_connections(admin: sa.Engine, name: str) -> int:
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
    )
    with admin.connect() as connection:
        return connection.execute(query, {"name": name}).scalar_one()


def wait_for_orphans(admin: sa.Engine, url: URL, timeout_s: float = 60.0) -> None:
    """Wait until the server has ended the backends of killed clients.

    A backend busy with a statement notices its client is gone only when the
    statement ends; it then rolls back. Checking earlier would race with that.
    """
    deadline = time.monotonic() + timeout_s
    while postgres_connections(admin, url.database) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert postgres_connections(admin, url.database) == 0, "a killed upgrade's backend lingers"


@contextmanager
def scratch_postgres_database(
    admin: sa.Engine, server: URL, template: str | None = None
) -> Iterator[URL]:
    """A new database (a copy of `template` if given), dropped afterwards."""
    name = f"anibridge_fault_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy_of}'))
    try:
        yield server.set(database=name)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
