"""Databases as released AniBridge versions left them on disk, and ways to inspect them.

The rows are written with raw sqlite3, the way the released service's SQLAlchemy
models left them and worse: umlauts and Japanese titles, NULL in every nullable
column, nested unicode JSON in `extra`, naive and timezone-aware timestamp
strings, byte counts above 2**32, every job status and client task state. The
same seed always gives the same rows.

Also here: a row dump for before/after comparisons, and the runner for the
command lines (`alembic`, `python -m app.migrate`, `anibridge`) as a container runs them.
"""

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.pool import NullPool

from app.migration.adoption.schema_shape import app_tables
from app.migration.revisions import migration_context
from tests.chain import BASELINE, SCRIPT
from tests.row_dump import RowDump

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
RELEASES_DIR = REPO_ROOT / "tests" / "data" / "releases"
LEGACY_SQL_DIR = REPO_ROOT / "tests" / "data" / "legacy_sql"

MULTI_SITE = "multi_site"
SINGLE_SITE = "single_site"
LEGACY_TABLES = ("clienttask", "episodeavailability", "job")
LEGACY_SITE = "aniworld.to"
SITE_COLUMNS = {"job": "source_site", "clienttask": "site", "episodeavailability": "site"}

JOB_STATUSES = ("queued", "downloading", "completed", "failed", "cancelled")
TASK_STATES = ("queued", "downloading", "paused", "completed", "error")
SITES = ("aniworld.to", "s.to", "megakino")
LANGUAGES = ("German Dub", "German Sub", "English Sub")
TITLES = (
    ("attack-on-titan", "進撃の巨人 – Attack on Titan"),
    ("demon-slayer", "鬼滅の刃"),
    ("frieren", "Frieren – Nach dem Ende der Reise"),
    ("maedchen-und-panzer", "Mädchen und Panzer: Größte Schlacht"),
    ("one-piece", "ワンピース"),
    ("die-schoene", "Die Schöne und das Biest – Über Äpfel"),
)
PROVIDERS = ("VOE", "Filemoon", "Vidoza", "Doodstream")
EPOCH = datetime(2023, 1, 1)


# Row checksums of the databases the real releases made (tests/data/releases/,
# copied from ../shared/spec/releases/ with its README): file -> table -> (rows, sha256).
RELEASE_CHECKSUMS = {
    "v1.16.1.db": {
        "clienttask": (387, "a82c22733bbb84c36c98b5560fa4b477d0c26d6b54480816d3088b9bd72b6a97"),
        "episodeavailability": (
            560,
            "4bd8686e3318418514379671de5e63725822e9b0bf43618080695bb4956b2915",
        ),
        "job": (430, "3bc47f8cc29729fb3ef20537b909263e4d54e974858c3aef412a0b688c18ecaf"),
    },
    "v2.1.0.db": {
        "clienttask": (387, "399b16b5d191630ad4c27bbe042b1f317c12ff790001623eda37f0acff6ad44a"),
        "episodeavailability": (
            560,
            "7c677a9f5bd2d91d9a45cec8dd6bac7985e0a374e73e2999fc6a63a89f7649a4",
        ),
        "job": (430, "12b4ee9c9a1cd2101014a51edf1ebbd2c225bba600ea83fb30437e1f8c1a3d00"),
    },
    "v1.16.1-then-v2.1.0.db": {
        "clienttask": (387, "a82c22733bbb84c36c98b5560fa4b477d0c26d6b54480816d3088b9bd72b6a97"),
        "episodeavailability": (
            560,
            "c4ba0303278cb54fe3148f7eadd850a8a0b57497f42e321271097371c1b7703d",
        ),
        "job": (430, "3bc47f8cc29729fb3ef20537b909263e4d54e974858c3aef412a0b688c18ecaf"),
    },
}
RELEASE_FILES = tuple(RELEASE_CHECKSUMS)


def release_file(name: str) -> Path:
    return RELEASES_DIR / name


def table_columns(path: Path, table: str) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]
    finally:
        connection.close()


def release_row_checksums(path: Path, columns: dict[str, list[str]]) -> dict[str, tuple]:
    """(row count, sha256) per table, over `columns` in that order, as the README computes them.

    Rows are ordered by every column and written as `repr(tuple(row)) + "\\n"`.
    """
    connection = sqlite3.connect(path)
    try:
        result = {}
        for table, names in columns.items():
            order = ", ".join(str(position) for position in range(1, len(names) + 1))
            rows = connection.execute(
                f'SELECT {", ".join(names)} FROM "{table}" ORDER BY {order}'
            ).fetchall()
            text = "".join(repr(tuple(row)) + "\n" for row in rows)
            result[table] = (len(rows), hashlib.sha256(text.encode()).hexdigest())
        return result
    finally:
        connection.close()


def released_columns(name: str) -> dict[str, list[str]]:
    """The columns each table of a release file has, in its order."""
    return {table: table_columns(release_file(name), table) for table in LEGACY_TABLES}


def legacy_sql(variant: str) -> str:
    """The DDL the released service's `create_all` ran (`multi_site` or `single_site`)."""
    return (LEGACY_SQL_DIR / f"{variant}.sql").read_text()


def create_legacy_sqlite(path: Path, variant: str, rows: int, seed: int = 0) -> None:
    """Write a legacy database file with `rows` rows in each of its tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA synchronous = OFF")
        connection.executescript(f"BEGIN; {legacy_sql(variant)} COMMIT;")
        insert_rows(connection, legacy_rows(variant, rows, seed))
        connection.commit()
    finally:
        connection.close()


def insert_rows(connection: sqlite3.Connection, rows: dict[str, list[dict[str, Any]]]) -> None:
    for table, table_rows in rows.items():
        columns = list(table_rows[0])
        connection.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})",
            [tuple(row[column] for column in columns) for row in table_rows],
        )


def legacy_rows(
    variant: str, count: int, seed: int = 0, first: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Rows number `first` to `first + count - 1`, as SQLite stores them.

    Single-site rows have no site columns. Batches added to one database need
    distinct seeds and numbers, which make distinct keys.
    """
    rng = random.Random(seed)
    numbers = range(first, first + count)
    jobs = [job_row(rng, index) for index in numbers]
    job_ids = dict(zip(numbers, (job["id"] for job in jobs), strict=True))
    rows = {
        "job": jobs,
        "episodeavailability": [availability_row(rng, index) for index in numbers],
        "clienttask": [client_task_row(rng, index, job_ids[index]) for index in numbers],
    }
    if variant == SINGLE_SITE:
        for table, column in SITE_COLUMNS.items():
            for row in rows[table]:
                del row[column]
    return rows


def job_row(rng: random.Random, index: int) -> dict[str, Any]:
    _slug, title = TITLES[index % len(TITLES)]
    total = rng.randrange(2**32, 2**40) if index % 3 else rng.randrange(2**20, 2**31)
    return {
        "id": f"{rng.getrandbits(128):032x}",
        "status": JOB_STATUSES[index % len(JOB_STATUSES)],
        "progress": rng.uniform(0, 100),
        "downloaded_bytes": rng.randrange(0, total),
        "total_bytes": maybe_null(rng, total),
        "speed": maybe_null(rng, rng.uniform(0, 2**27)),
        "eta": maybe_null(rng, rng.randrange(0, 86400)),
        "message": maybe_null(rng, f"Lade {title} – Größe unbekannt"),
        "result_path": maybe_null(rng, f"/downloads/{title}/S01E{index % 99 + 1:02d}.mkv"),
        "source_site": maybe_null(rng, SITES[index % len(SITES)]),
        "created_at": timestamp(rng, index),
        "updated_at": timestamp(rng, index + 1),
    }


def availability_row(rng: random.Random, index: int) -> dict[str, Any]:
    slug, _title = TITLES[index % len(TITLES)]
    return {
        "slug": slug,
        "season": 1 + index % 4,
        "episode": 1 + index,
        "language": LANGUAGES[index % len(LANGUAGES)],
        "site": SITES[index % len(SITES)],
        "available": rng.randrange(2),
        "height": maybe_null(rng, rng.choice((480, 720, 1080, 2160))),
        "vcodec": maybe_null(rng, rng.choice(("h264", "hevc", "av1"))),
        "provider": maybe_null(rng, rng.choice(PROVIDERS)),
        "checked_at": timestamp(rng, index),
        "extra": extra_json(rng, index),
    }


def client_task_row(rng: random.Random, index: int, job_id: str) -> dict[str, Any]:
    slug, title = TITLES[index % len(TITLES)]
    season, episode = 1 + index % 4, 1 + index % 24
    language = LANGUAGES[index % len(LANGUAGES)]
    return {
        "hash": f"{rng.getrandbits(160):040x}",
        "name": f"{title} S{season:02d}E{episode:02d} [{language}]",
        "slug": slug,
        "season": season,
        "episode": episode,
        "language": language,
        "site": maybe_null(rng, SITES[index % len(SITES)]),
        "job_id": maybe_null(rng, job_id),
        "save_path": maybe_null(rng, "/downloads/Über"),
        "category": maybe_null(rng, rng.choice(("sonarr", "tv-anime"))),
        "added_on": timestamp(rng, index),
        "completion_on": maybe_null(rng, timestamp(rng, index + 2)),
        "state": TASK_STATES[index % len(TASK_STATES)],
    }


def maybe_null(rng: random.Random, value: Any) -> Any:
    return None if rng.random() < 0.25 else value


def timestamp(rng: random.Random, index: int) -> str:
    """A timestamp string in one of the forms found in released databases."""
    moment = EPOCH + timedelta(seconds=rng.randrange(3 * 365 * 86400), microseconds=index)
    style = index % 3
    if style == 0:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    if style == 1:
        return moment.replace(tzinfo=UTC).isoformat()
    return moment.replace(tzinfo=timezone(timedelta(hours=9))).isoformat(timespec="seconds")


def extra_json(rng: random.Random, index: int) -> str | None:
    if index % 4 == 0:
        return None
    _slug, title = TITLES[index % len(TITLES)]
    document = {
        "title": title,
        "providers": rng.sample(PROVIDERS, 2),
        "probe": {"height": rng.choice((720, 1080)), "notes": ["Ü", "日本語", None]},
        "checked": rng.random() < 0.5,
    }
    return json.dumps(document, ensure_ascii=index % 2 == 0)


def dump_rows(connection: sa.Connection, tables: tuple[str, ...] | None = None) -> RowDump:
    """Every row of every app table (or of `tables`), raw from the driver, in a stable order.

    Each row is a tuple of (column, value) pairs sorted by column, so a column
    added or moved by a migration shows as exactly that.
    """
    result = RowDump()
    for table in tables or app_tables(connection):
        rows = connection.exec_driver_sql(f'SELECT * FROM "{table}"').mappings()
        result[table] = sorted((tuple(sorted(row.items())) for row in rows), key=repr)
    return result


def in_columns_of(dump: RowDump, expected: RowDump) -> RowDump:
    """`dump` with only the columns `expected` has: columns later revisions add are not compared."""
    kept = {table: columns_in(rows) for table, rows in expected.items()}
    return RowDump(
        (
            table,
            sorted(
                (tuple(pair for pair in row if pair[0] in kept[table]) for row in rows), key=repr
            ),
        )
        for table, rows in dump.items()
    )


def columns_in(rows: list[tuple]) -> set[str]:
    return {column for row in rows for column, _ in row}


def dump_sqlite_rows(path: Path, tables: tuple[str, ...] | None = None) -> RowDump:
    engine = sqlite_file_engine(path)
    try:
        with engine.connect() as connection:
            return dump_rows(connection, tables)
    finally:
        engine.dispose()


def sqlite_file_engine(path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)


def with_legacy_site(dump: RowDump) -> RowDump:
    """What a single-site dump must become: each row gains its table's site column."""
    return RowDump(
        (
            table,
            sorted(
                (tuple(sorted((*row, (SITE_COLUMNS[table], LEGACY_SITE)))) for row in rows),
                key=repr,
            ),
        )
        for table, rows in dump.items()
    )


def sqlite_revision(path: Path) -> str | None:
    connection = sqlite3.connect(path)
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        connection.close()
    return row[0] if row else None


def sqlite_table_names(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}
    finally:
        connection.close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def create_legacy_postgres(connection: sa.Connection, rows: int, seed: int = 0) -> None:
    """The released tables made by `create_all` on PostgreSQL, filled like the SQLite ones.

    The tables are what the baseline revision creates, the schema adoption recognises on
    PostgreSQL (today's models may have moved on). PostgreSQL gets booleans as booleans;
    timestamp and JSON strings are parsed by the server.
    """
    with Operations.context(migration_context(connection)):
        SCRIPT.get_revision(BASELINE).module.upgrade()
    for table, table_rows in legacy_rows(MULTI_SITE, rows, seed).items():
        columns = list(table_rows[0])
        statement = (
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(f'%({column})s' for column in columns)})"
        )
        connection.exec_driver_sql(statement, [postgres_values(row) for row in table_rows])


def postgres_values(row: dict[str, Any]) -> dict[str, Any]:
    if "available" in row:
        return {**row, "available": bool(row["available"])}
    return row


def command_environment(data_dir: Path, database_url: str | None = None, **extra: str) -> dict:
    """The process environment of a container start: DATA_DIR and, optionally, DATABASE_URL."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DB_") and key not in ("DATABASE_URL", "DATA_DIR")
    }
    environ["DATA_DIR"] = str(data_dir)
    if database_url is not None:
        environ["DATABASE_URL"] = database_url
    environ.update(extra)
    return environ


def run_command(
    argv: list[str], environ: dict[str, str], *, without_root_powers: bool = False
) -> subprocess.CompletedProcess:
    """Run a command from the repo root, output captured as text.

    `without_root_powers` drops every capability, so uid 0 is bound by permission
    bits like any user (the venv's interpreter lives under /root, out of reach of
    other users).
    """
    prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if without_root_powers else []
    return subprocess.run(
        [*prefix, *argv],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def alembic_upgrade_head(environ: dict[str, str], **options: bool) -> subprocess.CompletedProcess:
    return run_command([str(VENV_BIN / "alembic"), "upgrade", "head"], environ, **options)


def python_migrate(environ: dict[str, str], **options: bool) -> subprocess.CompletedProcess:
    return run_command([str(VENV_BIN / "python"), "-m", "app.migrate"], environ, **options)


def anibridge(args: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
    return run_command([str(VENV_BIN / "anibridge"), *args], environ)


def failure_line(result: subprocess.CompletedProcess, marker: str) -> str:
    """The one line of a failed command that carries `marker`, after checking it failed cleanly."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if marker in line]
    assert len(lines) == 1, output
    return lines[0]


# --- what users add to release files -------------------------------------------

VIEWS = {
    "completed_jobs": "SELECT id, status, created_at FROM job WHERE status = 'completed'",
    "available_episodes": (
        "SELECT slug, season, episode, language FROM episodeavailability WHERE available"
    ),
    "tasks_with_jobs": (
        "SELECT clienttask.hash, job.status FROM clienttask JOIN job ON job.id = clienttask.job_id"
    ),
}
TRIGGERS = {
    "job_status_stamp": (
        "CREATE TRIGGER job_status_stamp AFTER UPDATE OF status ON job "
        "BEGIN UPDATE job SET message = 'status changed' WHERE id = NEW.id; END"
    ),
    "availability_probe_stamp": (
        "CREATE TRIGGER availability_probe_stamp AFTER UPDATE OF available ON episodeavailability "
        "BEGIN UPDATE episodeavailability SET provider = 'trigger' WHERE rowid = NEW.rowid; END"
    ),
}


def add_views(connection: sqlite3.Connection) -> None:
    for name, select in VIEWS.items():
        connection.execute(f"CREATE VIEW {name} AS {select}")


def add_triggers(connection: sqlite3.Connection) -> None:
    for statement in TRIGGERS.values():
        connection.execute(statement)


def add_statistics(connection: sqlite3.Connection) -> None:
    connection.execute("ANALYZE")


USER_ADDITIONS = {"views": add_views, "triggers": add_triggers, "analyze": add_statistics}


def add_to_release_file(database: Path, additions: list[str]) -> None:
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        for addition in additions:
            USER_ADDITIONS[addition](connection)
    finally:
        connection.close()


def leave_in_write_ahead_log(database: Path, additions: list[str]) -> None:
    """Switch the file to WAL and leave `additions` in a -wal file no checkpoint has copied back.

    The database is changed in a scratch copy whose connection stays open while
    the file and its -wal are copied into place, as a killed process leaves them.
    """
    scratch = database.parent / "scratch" / database.name
    scratch.parent.mkdir()
    shutil.copyfile(database, scratch)
    connection = sqlite3.connect(scratch, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        for addition in additions:
            USER_ADDITIONS[addition](connection)
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{scratch}{suffix}", f"{database}{suffix}")
    finally:
        connection.close()
        shutil.rmtree(scratch.parent)


def view_counts(database: Path) -> dict[str, int]:
    connection = sqlite3.connect(database)
    try:
        return {
            name: connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in VIEWS
        }
    finally:
        connection.close()


def assert_triggers_fire(database: Path) -> None:
    connection = sqlite3.connect(database)
    try:
        job_id, status = connection.execute("SELECT id, status FROM job LIMIT 1").fetchone()
        connection.execute("UPDATE job SET status = ? WHERE id = ?", (status + "!", job_id))
        message = connection.execute("SELECT message FROM job WHERE id = ?", (job_id,)).fetchone()
        connection.execute("UPDATE episodeavailability SET available = NOT available")
        providers = connection.execute(
            "SELECT DISTINCT provider FROM episodeavailability"
        ).fetchall()
        connection.rollback()
    finally:
        connection.close()
    assert message == ("status changed",)
    assert providers == [("trigger",)]


def user_objects(database: Path) -> set[tuple[str, str]]:
    connection = sqlite3.connect(database)
    try:
        return set(
            connection.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'trigger')"
            )
        )
    finally:
        connection.close()


def user_objects_expected(additions: list[str]) -> set[tuple[str, str]]:
    views = {("view", name) for name in VIEWS} if "views" in additions else set()
    triggers = {("trigger", name) for name in TRIGGERS} if "triggers" in additions else set()
    return views | triggers


def analysed_tables(database: Path) -> set[str]:
    connection = sqlite3.connect(database)
    try:
        return {table for (table,) in connection.execute("SELECT tbl FROM sqlite_stat1")}
    finally:
        connection.close()
