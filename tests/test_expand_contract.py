"""The expand revision of tests/data/rolling/ outside a container: killed halfway, then run again.

Its fill commits as it goes, so a run killed during the fill leaves the
column and part of the fill behind (the index comes after the fill) while
alembic_version still names the released head; the next run must start the
revision again from the top and finish it (docs/replicas.md). The contract
revision then follows through the `alembic` command line (which, unlike the
service, loads the models and their naming convention).
"""

import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from tests.chain import HEAD, copy_project, plant_revisions, project_with
from tests.expand_contract import (
    CONTRACT,
    EXPAND,
    index_is_valid,
    insert_jobs,
    revision_file,
    upgrades_recorded,
)
from tests.faults import (
    alembic_versions,
    connect,
    finish,
    run_upgrade,
    start_upgrade,
    upgrade_environment,
    wait_for_orphans,
)

pytestmark = pytest.mark.postgres

JOBS = 100_000
FILL_TIMEOUT_S = 60


def filled_rows(url: URL) -> int:
    """Jobs with a priority; 0 before the column exists."""
    with connect(url) as connection:
        columns = {column["name"] for column in sa.inspect(connection).get_columns("job")}
        if "fixture_priority" not in columns:
            return 0
        return connection.execute(sa.text("SELECT count(fixture_priority) FROM job")).scalar_one()


def test_expand_killed_during_its_fill_completes_on_the_next_run_then_contract(
    postgres_url: URL, postgres_admin: sa.Engine, tmp_path: Path
) -> None:
    released = copy_project(tmp_path / "released")
    environ = upgrade_environment(released, postgres_url, tmp_path / "data")
    assert run_upgrade(released, environ).returncode == 0
    insert_jobs(postgres_url, JOBS)
    project = project_with(tmp_path / "expand", [revision_file(EXPAND)])
    environ = upgrade_environment(project, postgres_url, tmp_path / "data")

    started = time.perf_counter()
    upgrading = start_upgrade(project, environ)
    deadline = time.monotonic() + FILL_TIMEOUT_S
    while filled_rows(postgres_url) == 0:
        assert time.monotonic() < deadline and upgrading.poll() is None, "no batch committed"
        time.sleep(0.05)
    upgrading.send_signal(signal.SIGKILL)
    finish(upgrading, started)
    wait_for_orphans(postgres_admin, postgres_url)

    part = filled_rows(postgres_url)
    with connect(postgres_url) as connection:
        assert alembic_versions(connection) == [HEAD]
    assert 0 < part < JOBS

    rerun = run_upgrade(project, environ)

    assert rerun.returncode == 0, rerun.output
    assert filled_rows(postgres_url) == JOBS
    with connect(postgres_url) as connection:
        assert alembic_versions(connection) == [EXPAND]
        assert index_is_valid(connection, "ix_job_fixture_priority")
        assert upgrades_recorded(connection, EXPAND) == 1

    plant_revisions(project, [revision_file(CONTRACT)])
    contract = run_upgrade(project, environ)

    assert contract.returncode == 0, contract.output
    with connect(postgres_url) as connection:
        assert alembic_versions(connection) == [CONTRACT]
        nullable = connection.execute(
            sa.text(
                "SELECT is_nullable FROM information_schema.columns "
                "WHERE table_name = 'job' AND column_name = 'fixture_priority'"
            )
        ).scalar_one()
    assert nullable == "NO"
