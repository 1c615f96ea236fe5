"""Every fix the lint and its docs suggest, run as docs/migrations.md writes it.

The examples under "The lint: data loss is a decision" and "PostgreSQL lock
hazards" are taken from the guide as written (`<!-- docs-example: NAME -->`,
read by tests/test_patterns.py's `DocsChain`, the columns they add renamed by its
FIXTURE_COLUMNS) and planted after the real head
in a copy of the project. On SQLite and on PostgreSQL each chain upgrades a
database holding jobs and tasks, one revision at a time with new jobs written
before each (as the release still serving writes them, without the new
column), keeps every row and does what it says, downgrades back to the real
head keeping every row, and passes the lint.
"""

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from app.migration.authoring.lint import lint_revisions
from app.migration.revisions import current_heads
from tests.chain import copy_project
from tests.conftest import settings_for
from tests.faults import JOB_COLUMNS, seed_job_rows
from tests.test_patterns import DocsChain, plain_connection, project_config, real_head, scalar

pytestmark = pytest.mark.timeout(240)

JOBS_PER_STEP = 400
CHAINS = {
    "NOT NULL column with a server default": (
        DocsChain("migrations.md", (("not-null-server-default", "c0de00000011"),)),
        "SELECT count(*) FROM job WHERE fixture_priority = 0",
    ),
    "NOT NULL column added nullable, filled, then set NOT NULL": (
        DocsChain(
            "migrations.md",
            (
                ("not-null-add", "c0de00000021"),
                ("not-null-fill", "c0de00000022"),
                ("not-null-set", "c0de00000023"),
            ),
        ),
        "SELECT count(*) FROM job WHERE fixture_seen_at = updated_at",
    ),
    "foreign key NOT VALID, validated outside the transaction": (
        DocsChain("migrations.md", (("foreign-key", "c0de00000031"),)),
        "SELECT count(*) FROM clienttask JOIN job ON job.id = clienttask.job_id",
    ),
    "unique index built concurrently, then the constraint": (
        DocsChain("migrations.md", (("unique", "c0de00000041"),)),
        "SELECT count(*) FROM job",
    ),
}
CONSTRAINTS = {
    "NOT NULL column with a server default": ("job", "fixture_priority", "not null"),
    "NOT NULL column added nullable, filled, then set NOT NULL": (
        "job",
        "fixture_seen_at",
        "not null",
    ),
    "foreign key NOT VALID, validated outside the transaction": (
        "clienttask",
        "fk_clienttask_job_id_job",
        "foreign key",
    ),
    "unique index built concurrently, then the constraint": ("job", "uq_job_message", "unique"),
}


def write_jobs_and_tasks(url: URL, step: int) -> None:
    """The `step`th lot of jobs, each with a task pointing at it, as the serving release writes."""
    rows = list(seed_job_rows(JOBS_PER_STEP * (step + 1)))[JOBS_PER_STEP * step :]
    job = sa.table("job", *(sa.column(name) for name in JOB_COLUMNS))
    with plain_connection(url) as connection:
        connection.execute(job.insert(), [dict(zip(JOB_COLUMNS, row, strict=True)) for row in rows])
        connection.execute(
            sa.text(
                "INSERT INTO clienttask (hash, name, slug, season, episode, language, job_id, "
                "added_on, state) SELECT id, 'n', 's', 1, 1, 'German Dub', id, created_at, "
                "'queued' FROM job WHERE id NOT IN (SELECT hash FROM clienttask)"
            )
        )
        connection.commit()


def has_constraint(url: URL, table: str, name: str, kind: str) -> bool:
    """Whether `table` has the NOT NULL column, foreign key or unique constraint `name`."""
    with plain_connection(url) as connection:
        inspector = sa.inspect(connection)
        if kind == "not null":
            [column] = [c for c in inspector.get_columns(table) if c["name"] == name]
            return not column["nullable"]
        found = (
            inspector.get_foreign_keys(table)
            if kind == "foreign key"
            else inspector.get_unique_constraints(table)
        )
        return name in {constraint["name"] for constraint in found}


@pytest.mark.parametrize("case", sorted(CHAINS))
def test_the_documented_fix_upgrades_rows_downgrades_and_lints_clean(
    database_url: URL, tmp_path: Path, case: str
) -> None:
    chain, done_rows = CHAINS[case]
    project = copy_project(tmp_path / "project")
    chain.plant(project)
    config = project_config(project, settings_for(database_url, tmp_path / "data"))
    command.upgrade(config, real_head())

    for step, (_name, revision) in enumerate(chain.revisions):
        write_jobs_and_tasks(database_url, step)
        command.upgrade(config, revision)

    jobs = JOBS_PER_STEP * len(chain.revisions)
    with plain_connection(database_url) as connection:
        assert current_heads(connection) == (chain.last,)
    assert scalar(database_url, "SELECT count(*) FROM job") == jobs
    assert scalar(database_url, done_rows) == jobs
    assert has_constraint(database_url, *CONSTRAINTS[case])
    planted = {revision for _name, revision in chain.revisions}
    findings = lint_revisions(ScriptDirectory(str(project / "migrations")))
    assert [str(finding) for finding in findings if finding.revision in planted] == []

    command.downgrade(config, real_head())

    with plain_connection(database_url) as connection:
        assert current_heads(connection) == (real_head(),)
    assert scalar(database_url, "SELECT count(*) FROM job") == jobs
    assert scalar(database_url, "SELECT count(*) FROM clienttask") == jobs
