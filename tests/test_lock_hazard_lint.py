"""The lint's PostgreSQL lock-hazard rules, on what `alembic revision --autogenerate` writes.

Each case changes the models of a copy of the project (`Project` of
tests/test_autogenerate.py), brings a PostgreSQL database to head and lets the
alembic CLI write the revision. The post-write hook must print the finding as
the file is written, and the lint must flag the file. Then the safe pattern
for the same change passes the lint: written by hand in place of the
generated upgrade (and run: `alembic upgrade head`, then `alembic check` finds
no drift), or, for drops and renames, the expand step autogenerate writes for
the model change that keeps the old column, and the contract step
acknowledged with the release that stopped reading it.

Autogenerate does not detect CHECK constraints, so that rule is tried on
hand-written revisions only (tests/test_revision_lint.py).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from app.migration.authoring.lint import lint_revisions
from tests.chain import copy_project
from tests.test_autogenerate import Project, edit_models

JOB_MESSAGE = "    message: str | None = None\n"
JOB_ETA = "    eta: int | None = None\n"
TASK_JOB_ID = "    job_id: str | None = Field(default=None, index=True)\n"
TASK_SAVE_PATH = "    save_path: str | None = None\n"
UPGRADE_BODY = re.compile(
    r'(def upgrade\(\) -> None:\n    """Upgrade schema."""\n).*?(?=\n\n\n)', re.S
)


@dataclass(frozen=True)
class Hazard:
    before: str
    after: str
    key: str
    safe_upgrade: str = ""
    acknowledgement: str = ""


HAZARDS = {
    "index on an existing table": Hazard(
        JOB_MESSAGE,
        "    message: str | None = Field(default=None, index=True)\n",
        "index_not_concurrent job.ix_job_message",
        safe_upgrade="""\
    from app.migration.patterns import outside_transaction

    with outside_transaction() as concurrently:
        op.create_index("ix_job_message", "job", ["message"], postgresql_concurrently=concurrently)
""",
    ),
    "NOT NULL on an existing column": Hazard(
        JOB_MESSAGE,
        '    message: str = ""\n',
        "set_not_null job.message",
        safe_upgrade="""\
    from app.migration.patterns import fill_in_batches, outside_transaction

    fill_in_batches("job", set_="message = ''", where="message IS NULL")
    op.create_check_constraint(
        op.f("ck_job_message_not_null"), "job", "message IS NOT NULL", postgresql_not_valid=True
    )
    with outside_transaction():
        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_message_not_null")
        op.alter_column("job", "message", existing_type=sa.VARCHAR(), nullable=False)
        op.drop_constraint(op.f("ck_job_message_not_null"), "job", type_="check")
""",
    ),
    "foreign key": Hazard(
        TASK_JOB_ID,
        '    job_id: str | None = Field(default=None, index=True, foreign_key="job.id")\n',
        "validated_constraint clienttask.fk_clienttask_job_id_job",
        safe_upgrade="""\
    from app.migration.patterns import outside_transaction

    op.create_foreign_key(
        "fk_clienttask_job_id_job",
        "clienttask",
        "job",
        ["job_id"],
        ["id"],
        postgresql_not_valid=True,
    )
    with outside_transaction():
        op.execute("ALTER TABLE clienttask VALIDATE CONSTRAINT fk_clienttask_job_id_job")
""",
    ),
    "unique constraint": Hazard(
        JOB_MESSAGE,
        "    message: str | None = Field(default=None, unique=True)\n",
        "validated_constraint job.uq_job_message",
        safe_upgrade="""\
    from app.migration.patterns import outside_transaction

    with outside_transaction() as concurrently:
        op.create_index(
            "uq_job_message", "job", ["message"], unique=True, postgresql_concurrently=concurrently
        )
    op.execute("ALTER TABLE job ADD CONSTRAINT uq_job_message UNIQUE USING INDEX uq_job_message")
""",
    ),
    "integer to bigint": Hazard(
        JOB_ETA,
        "    eta: int | None = Field(default=None, sa_type=BigInteger)\n",
        "rewriting_type job.eta",
    ),
    "rename a column": Hazard(
        TASK_SAVE_PATH,
        "    download_path: str | None = None\n",
        "rename_column clienttask.save_path",
        acknowledgement='acknowledged_lock_hazards = {"rename_column clienttask.save_path": '
        '"no release reads save_path since 0.5.0"}\n',
    ),
    "drop a column": Hazard(
        "    result_path: str | None = None\n",
        "",
        "drop_column job.result_path",
        acknowledgement='acknowledged_data_loss = {"drop_column job.result_path": '
        '"no release reads result_path since 0.5.0"}\n',
    ),
    "rename a table": Hazard(
        '    __tablename__ = "strm_url_mapping"\n',
        '    __tablename__ = "strm_url_map"\n',
        "drop_table strm_url_mapping",
        acknowledgement='acknowledged_data_loss = {"drop_table strm_url_mapping": '
        '"dormant: no release reads it since 0.4.0"}\n',
    ),
}

EXPANDS = [
    (JOB_ETA, JOB_ETA + "    eta_ms: int | None = Field(default=None, sa_type=BigInteger)\n"),
    (TASK_SAVE_PATH, TASK_SAVE_PATH + "    download_path: str | None = None\n"),
    (JOB_MESSAGE, "    message: str | None = Field(default=None, sa_type=Text)\n"),
]


@pytest.fixture
def project(postgres_url: URL, tmp_path: Path) -> Project:
    """A copy of the project on a PostgreSQL database at head."""
    project = Project(copy_project(tmp_path / "project"), postgres_url, tmp_path / "data")
    project.data_dir.mkdir()
    edit_models(project, "from sqlalchemy import JSON,", "from sqlalchemy import JSON, Text,")
    project.alembic_ok("upgrade", "head")
    return project


def autogenerate(project: Project, before: str, after: str) -> tuple[Path, str]:
    """The revision `alembic revision --autogenerate` writes for the change, and its output."""
    edit_models(project, before, after)
    files = project.revision_files()
    result = project.alembic_ok("revision", "--autogenerate", "-m", "model change")
    [revision] = project.revision_files() - files
    return revision, result.stdout + result.stderr


def lint_keys(project: Project) -> list[str]:
    migrations = ScriptDirectory(str(project.root / "migrations"))
    return [finding.key for finding in lint_revisions(migrations)]


def rewrite(project: Project, revision: Path, text: str) -> None:
    """Put `text` in the revision's file and re-sum it in the copy's manifest."""
    revision.write_text(text, encoding="utf-8")
    project.python("-m", "app.migration.authoring.manifest")


@pytest.mark.parametrize("case", sorted(HAZARDS))
def test_autogenerate_output_is_flagged_when_written_and_the_safe_pattern_passes(
    project: Project, case: str
) -> None:
    hazard = HAZARDS[case]

    revision, output = autogenerate(project, hazard.before, hazard.after)

    assert f"lint: {revision}: {hazard.key}: " in output, output
    assert hazard.key in lint_keys(project)
    text = revision.read_text(encoding="utf-8")
    if hazard.safe_upgrade:
        rewrite(project, revision, UPGRADE_BODY.sub(rf"\g<1>{hazard.safe_upgrade}", text))
        assert lint_keys(project) == []
        project.alembic_ok("upgrade", "head")
        project.alembic_ok("check")
    if hazard.acknowledgement:
        rewrite(
            project,
            revision,
            text.replace("\n\ndef upgrade", f"{hazard.acknowledgement}\n\ndef upgrade"),
        )
        assert lint_keys(project) == []


def test_autogenerate_output_of_expand_steps_passes(project: Project) -> None:
    """A column beside the one to retype or rename, and varchar to text, which needs no rewrite."""
    for before, after in EXPANDS[1:]:
        edit_models(project, before, after)

    revision, output = autogenerate(project, *EXPANDS[0])

    assert "lint:" not in output, output
    assert lint_keys(project) == []
    text = revision.read_text(encoding="utf-8")
    assert 'add_column(sa.Column("eta_ms"' in text and "type_=sa.Text()" in text, text
    project.alembic_ok("upgrade", "head")
    project.alembic_ok("check")


def test_the_hook_names_a_file_that_is_not_a_revision_in_one_line(tmp_path: Path) -> None:
    project = Project(copy_project(tmp_path / "project"), URL.create("sqlite"), tmp_path)
    stray = project.versions_dir / "missing.py"

    result = project.python("-m", "app.migration.authoring.lint", "hook", str(stray))

    assert result.returncode == 1
    assert result.stdout == f"lint: error: {stray} is not a revision file of {stray.parents[1]}\n"
    assert result.stderr == ""
