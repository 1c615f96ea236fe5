"""5. Single-site adoption: `python -m app.migrate` on a file a single-site release made.

The template is the real v1.16.1 file (tests/data/releases/), its
`episodeavailability` grown with sqlite3 to the benchmark's row count. The
measured figure is the whole migration step, process start to exit, with
DB_BACKUP_KEEP=0 (the backup is benchmark 4): recognise the schema, rebuild
the three tables into the multi-site shape, stamp, run the later revisions.

The floor does the raw work in a process of its own: import SQLAlchemy and
Alembic (what any Alembic-based step must load), then, with sqlite3 in one
transaction, copy each table with `INSERT ... SELECT` into the multi-site
shape (the site columns filled in), drop the old table, rename the new one
and create its indexes.
"""

import shutil
from pathlib import Path

from bench.common import (
    PROJECT_ROOT,
    PYTHON,
    Figure,
    Report,
    check_rate_and_memory,
    child_env,
    measure_interleaved,
    python_code,
    run_timed,
    scratch_dir,
)
from bench.data import (
    SINGLE_SITE_AVAILABILITY_COLUMNS,
    fresh_copy,
    insert_rows,
    row_count,
    single_site_availability_rows,
)

RELEASE_FILE = PROJECT_ROOT / "tests" / "data" / "releases" / "v1.16.1.db"
RELEASE_SCHEMAS = PROJECT_ROOT / "app" / "migration" / "adoption" / "releases"
MULTI_SITE_SCHEMA = RELEASE_SCHEMAS / "v2.1.0.schema.sql"
RAW_COPY_CODE = """
import sqlite3, sys
import alembic.command, alembic.config, sqlalchemy

database, schema_file = sys.argv[1:]
lines = [line for line in open(schema_file) if not line.startswith("--")]
statements = [s.strip() for s in "".join(lines).split(";") if s.strip()]
connection = sqlite3.connect(database, isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
for table in ("job", "clienttask", "episodeavailability"):
    create, = [s for s in statements if s.startswith(f"CREATE TABLE {table} (")]
    old = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    new = [row[1] for row in sqlite3.connect(":memory:").execute(create).execute(
        f"PRAGMA table_info({table})")]
    values = ", ".join(c if c in old else "'aniworld.to'" for c in new)
    connection.execute(create.replace(f"CREATE TABLE {table}", f"CREATE TABLE _raw_{table}", 1))
    connection.execute(f"INSERT INTO _raw_{table} ({', '.join(new)}) SELECT {values} FROM {table}")
    connection.execute(f"DROP TABLE {table}")
    connection.execute(f"ALTER TABLE _raw_{table} RENAME TO {table}")
    for index in statements:
        if index.startswith("CREATE INDEX") and f" ON {table} (" in index:
            connection.execute(index)
connection.execute("COMMIT")
"""
FULL_ROWS = (10_000, 1_000_000)
QUICK_ROWS = (10_000, 50_000)
TARGET_SPEED = 0.8
TARGET_MEMORY_MIB = 20.0


def grown_release_file(path: Path, rows: int) -> Path:
    """The v1.16.1 file with `episodeavailability` grown to `rows` rows."""
    path.parent.mkdir(parents=True)
    shutil.copyfile(RELEASE_FILE, path)
    path.chmod(0o644)
    added = rows - row_count(path, "episodeavailability")
    insert_rows(
        path,
        "episodeavailability",
        SINGLE_SITE_AVAILABILITY_COLUMNS,
        single_site_availability_rows(added),
    )
    return path


def measure_rows(root: Path, rows: int, runs: int) -> dict[str, Figure]:
    template = grown_release_file(root / f"template-{rows}" / "anibridge_jobs.db", rows)
    data_dir = root / "data"
    database = data_dir / "anibridge_jobs.db"
    env = child_env(DATA_DIR=str(data_dir), DB_BACKUP_KEEP="0")
    figures = measure_interleaved(
        runs,
        {
            f"floor: imports + raw copy, {rows:,} rows": lambda: run_timed(
                [*python_code(RAW_COPY_CODE), str(database), str(MULTI_SITE_SCHEMA)], env
            ),
            f"python -m app.migrate (adoption), {rows:,} rows": lambda: run_timed(
                [PYTHON, "-m", "app.migrate"], env
            ),
        },
        prepare=lambda: fresh_copy(template, data_dir),
    )
    if row_count(database, "episodeavailability") != rows:
        raise RuntimeError("the adoption lost rows")
    for figure in figures.values():
        figure.unit_count = rows
    return figures


def run(quick: bool, runs: int) -> Report:
    small_rows, big_rows = QUICK_ROWS if quick else FULL_ROWS
    report = Report(f"5. Single-site adoption of the v1.16.1 file grown to {big_rows:,} rows")
    with scratch_dir("adoption") as root:
        small_floor, small = measure_rows(root, small_rows, runs).values()
        big_floor, big = measure_rows(root, big_rows, runs).values()
    for floor, figure in ((small_floor, small), (big_floor, big)):
        report.add(floor, floor, "rows")
        report.add(figure, floor, "rows")
    check_rate_and_memory(
        report,
        (small_rows, big_rows),
        small,
        big,
        big_floor,
        "the floor",
        (TARGET_SPEED, TARGET_MEMORY_MIB),
    )
    return report
