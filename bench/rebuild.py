"""3. Table rebuild on SQLite: a batch-mode revision over many `job` rows, against raw SQL.

The revision is added to a temporary copy of the project; it rebuilds `job`
(`recreate="always"`) to change `message` to TEXT. The floor does the same
rebuild by hand with sqlite3 in a process of its own: create the new table,
`INSERT INTO ... SELECT` every row, drop the old one, rename, recreate the
indexes, in one transaction. DB_BACKUP_KEEP=0: the backup is benchmark 4.
"""

from pathlib import Path

from bench.common import (
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
    JOB_COLUMNS,
    fresh_copy,
    insert_rows,
    job_rows,
    migrate_to_head,
    row_count,
)
from tests.chain import InjectedRevision, copy_project, plant_revisions

REBUILD = InjectedRevision(
    "bench0rebuild",
    "Benchmark only: rebuild job in batch mode",
    """\
    with op.batch_alter_table("job", recreate="always") as batch_op:
        batch_op.alter_column("message", existing_type=sa.String(), type_=sa.Text())""",
    downgrade="    pass",
)
RAW_REBUILD_CODE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
table_sql, = connection.execute(
    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'job'").fetchone()
index_sql = [sql for sql, in connection.execute(
    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'job' AND sql IS NOT NULL")]
connection.execute(table_sql.replace("CREATE TABLE job", "CREATE TABLE _raw_job", 1)
                   .replace("message VARCHAR", "message TEXT", 1))
connection.execute("INSERT INTO _raw_job SELECT * FROM job")
connection.execute("DROP TABLE job")
connection.execute("ALTER TABLE _raw_job RENAME TO job")
for sql in index_sql:
    connection.execute(sql)
connection.execute("COMMIT")
"""
FULL_ROWS = (10_000, 1_000_000)
QUICK_ROWS = (10_000, 50_000)
TARGET_SPEED = 0.8
TARGET_MEMORY_MIB = 20.0


def build_template(root: Path, rows: int) -> tuple[Path, Path]:
    """A project copy with the rebuild revision, and a database one revision before it."""
    project = copy_project(root / "project")
    template = migrate_to_head(root / f"template-{rows}", project)
    insert_rows(template, "job", JOB_COLUMNS, job_rows(rows))
    plant_revisions(project, [REBUILD])
    return project, template


def measure_rows(root: Path, rows: int, runs: int) -> dict[str, Figure]:
    project, template = build_template(root / str(rows), rows)
    data_dir = root / "data"
    env = child_env(DATA_DIR=str(data_dir), DB_BACKUP_KEEP="0")
    database = data_dir / "anibridge_jobs.db"
    figures = measure_interleaved(
        runs,
        {
            f"floor: raw rebuild, {rows:,} rows": lambda: run_timed(
                [*python_code(RAW_REBUILD_CODE), str(database)], env
            ),
            f"app.migrate batch rebuild, {rows:,} rows": lambda: run_timed(
                [PYTHON, "-m", "app.migrate"], env, cwd=project
            ),
        },
        prepare=lambda: fresh_copy(template, data_dir),
    )
    if row_count(database, "job") != rows:
        raise RuntimeError("the rebuild lost rows")
    for figure in figures.values():
        figure.unit_count = rows
    return figures


def marginal_rate(small: Figure, big: Figure) -> float:
    """Rows per second between the two sizes: what each extra row costs."""
    return (big.unit_count - small.unit_count) / (big.seconds - small.seconds)


def run(quick: bool, runs: int) -> Report:
    report = Report("3. Table rebuild on SQLite (batch mode, recreate='always')")
    small_rows, big_rows = QUICK_ROWS if quick else FULL_ROWS
    with scratch_dir("rebuild") as root:
        small_floor, small = measure_rows(root, small_rows, runs).values()
        big_floor, big = measure_rows(root, big_rows, runs).values()
    for floor, figure in ((small_floor, small), (big_floor, big)):
        report.add(floor, floor, "rows")
        report.add(figure, floor, "rows")
    report.lines.append(
        f"  marginal rate ({small_rows:,} -> {big_rows:,} rows, fixed start-up cost removed): "
        f"{marginal_rate(small, big) / marginal_rate(small_floor, big_floor):.2f}x raw"
    )
    check_rate_and_memory(
        report,
        (small_rows, big_rows),
        small,
        big,
        big_floor,
        "raw",
        (TARGET_SPEED, TARGET_MEMORY_MIB),
    )
    return report
