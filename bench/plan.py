"""8. `anibridge plan` against the upgrade it rehearses, on the 1,000,000-row v1.16.1 file.

The floor is the upgrade itself as a container start runs it: `python -m
app.migrate` with the default settings, so the backup it takes first is
included. The measured figure is `python -m app.cli plan --json` (what `anibridge plan` runs): the
consistent copy into a scratch folder beside the database, the same adoption
and revisions on the copy, the row counts and comparisons of every step, and
the rollback. Both run on a fresh copy of the same grown release file (benchmark
5 builds it), taking turns.
"""

from bench.adoption import grown_release_file
from bench.common import (
    PYTHON,
    Report,
    child_env,
    measure_interleaved,
    ratio,
    run_timed,
    scratch_dir,
)
from bench.data import fresh_copy

FULL_ROWS = 1_000_000
QUICK_ROWS = 50_000
TARGET_RATIO = 1.5
PLAN_EXIT_WOULD_CHANGE = 2


def run(quick: bool, runs: int) -> Report:
    rows = QUICK_ROWS if quick else FULL_ROWS
    report = Report(f"8. `anibridge plan` of the v1.16.1 file grown to {rows:,} rows")
    with scratch_dir("plan") as root:
        template = grown_release_file(root / "template" / "anibridge_jobs.db", rows)
        data_dir = root / "data"
        env = child_env(DATA_DIR=str(data_dir))

        figures = measure_interleaved(
            runs,
            {
                f"floor: python -m app.migrate, {rows:,} rows": lambda: run_timed(
                    [PYTHON, "-m", "app.migrate"], env
                ),
                f"anibridge plan --json, {rows:,} rows": lambda: run_timed(
                    [PYTHON, "-m", "app.cli", "plan", "--json"], env, expect=PLAN_EXIT_WOULD_CHANGE
                ),
            },
            prepare=lambda: fresh_copy(template, data_dir),
        )
        left = sorted(path.name for path in data_dir.iterdir())
    floor, plan = figures.values()
    report.add(floor, floor)
    report.add(plan, floor)
    report.check(
        f"plan <= {TARGET_RATIO}x the upgrade, copy included",
        ratio(plan, floor) <= TARGET_RATIO,
        f"{ratio(plan, floor):.2f}x",
    )
    report.check(
        "the plan leaves nothing beside the database",
        left == ["anibridge_jobs.db"],
        ", ".join(left),
    )
    return report
