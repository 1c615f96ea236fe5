"""5. Single-site adoption: `python -m app.migrate` on a pre-multi-site database.

The database has the single-site schema (app/db/legacy/single_site.sql) and
many `episodeavailability` rows, inserted with sqlite3. The floor copies the
same rows raw into a table of the new shape, in a process of its own: rename
the old table, create the new one, `INSERT INTO ... SELECT` with the site
filled in, drop the old one, then create the `checked_at` index.
DB_BACKUP_KEEP=0: the backup is benchmark 4.
"""

from importlib.resources import files
from pathlib import Path

from bench.common import (
    PYTHON,
    Report,
    child_env,
    measure_interleaved,
    python_code,
    ratio,
    run_timed,
    scratch_dir,
    sqlite_connect,
)
from bench.data import (
    SINGLE_SITE_AVAILABILITY_COLUMNS,
    fresh_copy,
    insert_rows,
    row_count,
    single_site_availability_rows,
)

RAW_COPY_CODE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
connection.execute("ALTER TABLE episodeavailability RENAME TO _old")
connection.execute('''CREATE TABLE episodeavailability (
    slug VARCHAR NOT NULL, season INTEGER NOT NULL, episode INTEGER NOT NULL,
    language VARCHAR NOT NULL, site VARCHAR NOT NULL, available BOOLEAN NOT NULL,
    height INTEGER, vcodec VARCHAR, provider VARCHAR, checked_at DATETIME NOT NULL,
    extra JSON, CONSTRAINT pk_episodeavailability
    PRIMARY KEY (slug, season, episode, language, site))''')
columns = "slug, season, episode, language, available, height, vcodec, provider, checked_at, extra"
connection.execute(f"INSERT INTO episodeavailability ({columns}, site) "
                   f"SELECT {columns}, 'aniworld.to' FROM _old")
connection.execute("DROP TABLE _old")
connection.execute("CREATE INDEX ix_episodeavailability_checked_at "
                   "ON episodeavailability (checked_at)")
connection.execute("COMMIT")
"""
FULL_ROWS = 1_000_000
QUICK_ROWS = 50_000


def build_single_site_database(path: Path, rows: int) -> Path:
    path.parent.mkdir(parents=True)
    connection = sqlite_connect(path)
    try:
        connection.executescript(files("app.db.legacy").joinpath("single_site.sql").read_text())
    finally:
        connection.close()
    insert_rows(
        path,
        "episodeavailability",
        SINGLE_SITE_AVAILABILITY_COLUMNS,
        single_site_availability_rows(rows),
    )
    return path


def run(quick: bool, runs: int) -> Report:
    rows = QUICK_ROWS if quick else FULL_ROWS
    report = Report(f"5. Single-site adoption ({rows:,} episodeavailability rows)")
    with scratch_dir("adoption") as root:
        template = build_single_site_database(root / "template" / "anibridge_jobs.db", rows)
        data_dir = root / "data"
        database = data_dir / "anibridge_jobs.db"
        env = child_env(DATA_DIR=str(data_dir), DB_BACKUP_KEEP="0")
        figures = measure_interleaved(
            runs,
            {
                "floor: raw copy into the new shape": lambda: run_timed(
                    [*python_code(RAW_COPY_CODE), str(database)], env
                ),
                "python -m app.migrate (adopt + upgrade)": lambda: run_timed(
                    [PYTHON, "-m", "app.migrate"], env
                ),
            },
            prepare=lambda: fresh_copy(template, data_dir),
        )
        if row_count(database, "episodeavailability") != rows:
            raise RuntimeError("the adoption lost rows")
    floor, adoption = figures.values()
    for figure in figures.values():
        figure.unit_count = rows
        report.add(figure, floor, "rows")
    report.lines.append(f"  adoption takes {ratio(adoption, floor):.2f}x the raw copy")
    return report
