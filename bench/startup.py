"""1. Start-up at head: the container's migration step when nothing is pending.

The container's start-up step (`app.migration.start_up`) asks `app.migration.at_head` (timed
here as `python -m app.migration.at_head`) and, only when it cannot vouch for the
SQLite database, runs `alembic upgrade head`.
"""

from bench.common import (
    ALEMBIC,
    PYTHON,
    Report,
    child_env,
    measure_interleaved,
    python_code,
    ratio,
    run_timed,
    scratch_dir,
)

FLOOR_CODE = (
    "import sqlite3, sys\n"
    "connection = sqlite3.connect(sys.argv[1])\n"
    "connection.execute('SELECT version_num FROM alembic_version').fetchall()\n"
)
TARGET_RATIO = 2.0


def run(quick: bool, runs: int) -> Report:
    report = Report("1. Start-up at head (SQLite, nothing pending)")
    with scratch_dir("startup") as data_dir:
        env = child_env(DATA_DIR=str(data_dir))
        database = data_dir / "anibridge_jobs.db"
        run_timed([PYTHON, "-m", "app.migrate"], env)
        figures = measure_interleaved(
            runs,
            {
                "floor: python -c + sqlite3 read": lambda: run_timed(
                    [*python_code(FLOOR_CODE), str(database)], env
                ),
                "python -m app.migration.at_head (fast check)": lambda: run_timed(
                    [PYTHON, "-m", "app.migration.at_head"], env
                ),
                "python -m app.migrate (the in-process upgrade)": lambda: run_timed(
                    [PYTHON, "-m", "app.migrate"], env
                ),
                "alembic upgrade head": lambda: run_timed([ALEMBIC, "upgrade", "head"], env),
            },
        )
    floor, fast, full, alembic = figures.values()
    for figure in figures.values():
        report.add(figure, floor)
    report.lines.append(f"  fast check is {ratio(alembic, fast):.1f}x faster than alembic")
    report.check(
        f"app.migration.at_head <= {TARGET_RATIO}x floor",
        ratio(fast, floor) <= TARGET_RATIO,
        f"{ratio(fast, floor):.2f}x ({fast.seconds * 1e3:.0f} ms vs {floor.seconds * 1e3:.0f} ms)",
    )
    return report
