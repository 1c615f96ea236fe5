"""9. `anibridge plan` on PostgreSQL: what the service waits for, and what the plan costs.

A scratch database on the host's server (BENCH_POSTGRES_URL, default the local
trust-auth one) at head, with 1,000,000 jobs (100,000 with --quick), and one
pending revision adding a nullable column to `job`. While probe sessions stand
in for the service (benchmark 7's: one reads, one updates and one inserts a
job, each every 10 ms in its own autocommit session), two trials take turns:

* the upgrade: `python -m app.migrate`, then the revision is downgraded again
  and `job` vacuumed;
* the plan: `python -m app.cli plan --json` (what `anibridge plan` runs),
  which copies the database into a scratch one and upgrades that.

Each trial's figure is the longest any probe statement took while it ran, and
its wall time. The plan must hold the service up no longer than the upgrade
does (its longest wait at most the upgrade's plus the idle floor's noise), and
cost at most 1.5x the upgrade plus a copy of the database made by hand,
`pg_dump | psql` into a new database (timed on its own, without probes).
"""

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from bench.common import (
    PROJECT_ROOT,
    PYTHON,
    Figure,
    Report,
    Sample,
    child_env,
    ratio,
    scratch_dir,
    scratch_postgres_database,
)
from bench.locks import FLOOR_WINDOW_S, autocommit_engine, migrate, probing, vacuum_job
from tests.chain import HEAD, InjectedRevision, copy_project, plant_revisions
from tests.expand_contract import insert_jobs

FULL_ROWS = 1_000_000
QUICK_ROWS = 100_000
TARGET_COST_RATIO = 1.5
PLAN_EXIT_WOULD_CHANGE = 2
PLAN_COMMAND = [PYTHON, "-m", "app.cli", "plan", "--json"]
ADD_NOTE = InjectedRevision(
    "9a7e00000001",
    "Add job.fixture_note",
    '    op.add_column("job", sa.Column("fixture_note", sa.String(), nullable=True))\n',
    '    op.drop_column("job", "fixture_note")\n',
)
FLOOR = "floor: longest probe wait, nothing running"
UPGRADE_WAIT = "upgrade: longest probe wait"
PLAN_WAIT = "plan: longest probe wait"
UPGRADE_TIME = "upgrade: python -m app.migrate"
COPY_TIME = "copy by hand: pg_dump | psql"
PLAN_TIME = "plan: python -m app.cli plan --json"


def run(quick: bool, runs: int) -> Report:
    rows = QUICK_ROWS if quick else FULL_ROWS
    report = Report(f"9. `anibridge plan` on PostgreSQL, {rows:,} jobs: probe waits and cost")
    with scratch_postgres_database() as url, scratch_dir("plan-postgres") as scratch:
        migrate(PROJECT_ROOT, url, "upgrade", "head")
        insert_jobs(url, rows)
        vacuum_job(url)
        project = copy_project(scratch / "project")
        plant_revisions(project, [ADD_NOTE])
        figures = measure(url, rows, project, runs)
    for name in (FLOOR, UPGRADE_WAIT):
        report.add(figures[name])
    report.add(figures[PLAN_WAIT], figures[UPGRADE_WAIT])
    for name in (FLOOR, UPGRADE_WAIT, PLAN_WAIT):
        report.lines.append(f"    {name.split(':')[0]}, each run: {milliseconds(figures[name])}")
    floor_cost = Figure(
        "floor: upgrade + copy by hand",
        [Sample(u.seconds + c.seconds) for u, c in zip(*samples_of(figures), strict=True)],
    )
    for name in (UPGRADE_TIME, COPY_TIME):
        report.add(figures[name])
    report.add(floor_cost)
    report.add(figures[PLAN_TIME], floor_cost)
    plan_wait, upgrade_wait = figures[PLAN_WAIT].seconds, figures[UPGRADE_WAIT].seconds
    noise = figures[FLOOR].seconds
    report.check(
        "the plan holds the service up no longer than the upgrade (+ the floor's noise)",
        plan_wait <= upgrade_wait + noise,
        f"plan {plan_wait * 1e3:.0f} ms, upgrade {upgrade_wait * 1e3:.0f} ms, "
        f"floor {noise * 1e3:.0f} ms",
    )
    cost = ratio(figures[PLAN_TIME], floor_cost)
    report.check(
        f"plan <= {TARGET_COST_RATIO}x the upgrade + a copy by hand",
        cost <= TARGET_COST_RATIO,
        f"{cost:.2f}x",
    )
    return report


def milliseconds(figure: Figure) -> str:
    """The figure's samples in the order they ran: the spread behind its median."""
    return ", ".join(f"{sample.seconds * 1e3:.0f}" for sample in figure.samples) + " ms"


def samples_of(figures: dict[str, Figure]) -> tuple[list[Sample], list[Sample]]:
    return figures[UPGRADE_TIME].samples, figures[COPY_TIME].samples


def measure(url: URL, rows: int, project: Path, runs: int) -> dict[str, Figure]:
    """Each trial `runs` times, taking turns; the floor and the copy by hand once per round."""
    names = (FLOOR, UPGRADE_WAIT, PLAN_WAIT, UPGRADE_TIME, COPY_TIME, PLAN_TIME)
    figures = {name: Figure(name) for name in names}
    environ = child_env(DATABASE_URL=url.render_as_string(hide_password=False), LOG_LEVEL="warning")
    environ["PYTHONPATH"] = str(project)
    for _ in range(runs):
        with probing(url, rows) as probe:
            time.sleep(FLOOR_WINDOW_S)
        figures[FLOOR].samples.append(Sample(probe.longest()))
        figures[COPY_TIME].samples.append(copy_by_hand(url))
        wait, took = probed(url, rows, PLAN_COMMAND, project, environ)
        figures[PLAN_WAIT].samples.append(wait)
        figures[PLAN_TIME].samples.append(took)
        wait, took = probed(url, rows, [PYTHON, "-m", "app.migrate"], project, environ)
        figures[UPGRADE_WAIT].samples.append(wait)
        figures[UPGRADE_TIME].samples.append(took)
        migrate(project, url, "downgrade", HEAD)
        vacuum_job(url)
    return figures


def probed(
    url: URL, rows: int, argv: list[str], project: Path, environ: dict[str, str]
) -> tuple[Sample, Sample]:
    """Run `argv` while the probes run: their longest wait, and its wall time."""
    with probing(url, rows) as probe:
        started = time.perf_counter()
        result = subprocess.run(argv, cwd=project, env=environ, capture_output=True, text=True)
        took = time.perf_counter() - started
    if result.returncode not in (0, PLAN_EXIT_WOULD_CHANGE):
        failure = result.stderr + result.stdout[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {failure}")
    return Sample(probe.longest()), Sample(took)


def copy_by_hand(url: URL) -> Sample:
    """`pg_dump URL | psql NEW`: the copy an operator would make to rehearse on, timed."""
    for tool in ("pg_dump", "psql"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"benchmark 9 needs {tool} (postgresql-client) for its floor")
    name = f"bench_copy_{uuid.uuid4().hex[:8]}"
    admin = autocommit_engine(url)
    source = url.render_as_string(hide_password=False).replace("+psycopg", "")
    target = url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        started = time.perf_counter()
        subprocess.run(
            f"pg_dump --no-owner '{source}' | psql -q -v ON_ERROR_STOP=1 '{target}' >/dev/null",
            shell=True,
            check=True,
        )
        took = time.perf_counter() - started
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
    return Sample(took)
