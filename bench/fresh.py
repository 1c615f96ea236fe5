"""2. Fresh database: `python -m app.migrate` from no file to head, against `create_all`."""

import itertools

from bench.common import (
    PYTHON,
    Report,
    child_env,
    measure_interleaved,
    python_code,
    ratio,
    run_timed,
    scratch_dir,
)

CREATE_ALL_CODE = (
    "import sys\n"
    "from sqlalchemy import create_engine\n"
    "from app.data.models import metadata\n"
    "metadata.create_all(create_engine(f'sqlite:///{sys.argv[1]}'))\n"
)
TARGET_RATIO = 1.2


def run(quick: bool, runs: int) -> Report:
    report = Report("2. Fresh database (no file -> head)")
    with scratch_dir("fresh") as root:
        fresh_dirs = (root / str(number) for number in itertools.count())

        def migrate():
            return run_timed(
                [PYTHON, "-m", "app.migrate"], child_env(DATA_DIR=str(next(fresh_dirs)))
            )

        def create_all():
            folder = next(fresh_dirs)
            folder.mkdir()
            return run_timed(
                [*python_code(CREATE_ALL_CODE), str(folder / "anibridge_jobs.db")], child_env()
            )

        figures = measure_interleaved(
            runs,
            {
                "floor: metadata.create_all in its own process": create_all,
                "python -m app.migrate (base -> head)": migrate,
            },
        )
    floor, migrate_figure = figures.values()
    for figure in figures.values():
        report.add(figure, floor)
    report.check(
        f"app.migrate <= {TARGET_RATIO}x create_all",
        ratio(migrate_figure, floor) <= TARGET_RATIO,
        f"{ratio(migrate_figure, floor):.2f}x",
    )
    return report
