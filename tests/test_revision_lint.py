"""The lint of destructive revisions (app/migration/authoring/lint.py).

Every revision passes, each rule fires.

The rules are tried on small revisions written into a scratch versions folder,
each one operation that loses data (or one that looks like it but does not).
"""

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from app.migration.authoring.lint import lint_revisions
from app.migration.revisions import script_directory

AUTOCOMMIT_BLOCK = "    with op.get_context().autocommit_block():"
NOT_VALID_CHECK = (
    "    op.create_check_constraint(\n"
    '        "ck_job_message_not_null", "job", "message IS NOT NULL", postgresql_not_valid=True\n'
    "    )"
)

REVISION = '''"""A revision for the lint."""

import sqlalchemy as sa
from alembic import op

revision = "aaaaaaaaaaaa"
down_revision = None
branch_labels = None
depends_on = None
{acknowledgements}

def upgrade() -> None:
{body}


def downgrade() -> None:
    op.drop_table("job")
'''

FLAGGED = {
    "drop a table": ('    op.drop_table("job")', ["drop_table job"]),
    "drop a column in a batch": (
        '    with op.batch_alter_table("job") as batch_op:\n'
        '        batch_op.drop_column("message")',
        ["drop_column job.message"],
    ),
    "shorter string": (
        '    op.alter_column("job", "status", existing_type=sa.String(), type_=sa.String(10))',
        ["narrow_type job.status", "rewriting_type job.status"],
    ),
    "smaller integer": (
        '    op.alter_column("job", "eta", existing_type=sa.BigInteger(), type_=sa.Integer())',
        ["narrow_type job.eta", "rewriting_type job.eta"],
    ),
    "text to integer": (
        '    op.alter_column("job", "message", existing_type=sa.String(), type_=sa.Integer())',
        ["narrow_type job.message", "rewriting_type job.message"],
    ),
    "type change without the old type": (
        '    op.alter_column("job", "message", type_=sa.Text())',
        ["narrow_type job.message"],
    ),
    "NOT NULL column without a server default": (
        '    op.add_column("job", sa.Column("seen_at", sa.DateTime(), nullable=False))',
        ["not_null job.seen_at"],
    ),
    "NOT NULL made without a fill": (
        '    op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        ["not_null job.message", "set_not_null job.message"],
    ),
    "index on an existing table": (
        '    op.create_index("ix_job_message", "job", ["message"])',
        ["index_not_concurrent job.ix_job_message"],
    ),
    "index in a batch block": (
        '    with op.batch_alter_table("job") as batch_op:\n'
        '        batch_op.create_index("ix_job_message", ["message"], unique=False)',
        ["index_not_concurrent job.ix_job_message"],
    ),
    "concurrent index inside the transaction": (
        '    op.create_index("ix_job_message", "job", ["message"], postgresql_concurrently=True)',
        ["index_not_concurrent job.ix_job_message"],
    ),
    "fill, then NOT NULL on an existing table": (
        "    op.execute(\"UPDATE job SET message = '' WHERE message IS NULL\")\n"
        '    op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        ["set_not_null job.message"],
    ),
    "NOT NULL after a check that is never validated": (
        f"{NOT_VALID_CHECK}\n"
        '    op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        ["not_null job.message", "set_not_null job.message"],
    ),
    "foreign key NOT VALID, validated in the same transaction": (
        "    op.create_foreign_key(\n"
        '        "fk_task_job", "clienttask", "job", ["job_id"], ["id"], '
        "postgresql_not_valid=True\n"
        "    )\n"
        '    op.execute("ALTER TABLE clienttask VALIDATE CONSTRAINT fk_task_job")',
        ["validated_constraint clienttask.fk_task_job"],
    ),
    "check NOT VALID, validated in the same transaction, then SET NOT NULL": (
        f"{NOT_VALID_CHECK}\n"
        '    op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_message_not_null")\n'
        f"{AUTOCOMMIT_BLOCK}\n"
        '        op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        ["validated_constraint job.ck_job_message_not_null", "set_not_null job.message"],
    ),
    "check in SQL without NOT VALID": (
        "    op.execute(\n"
        "        'ALTER TABLE job ADD CONSTRAINT ck_job_message_not_null '\n"
        "        'CHECK (message IS NOT NULL)'\n"
        "    )\n"
        '    op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_message_not_null")\n'
        '    op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        ["set_not_null job.message"],
    ),
    "validated foreign key": (
        '    op.create_foreign_key("fk_task_job", "clienttask", "job", ["job_id"], ["id"])',
        ["validated_constraint clienttask.fk_task_job"],
    ),
    "validated check": (
        '    op.create_check_constraint("ck_job_progress", "job", "progress >= 0")',
        ["validated_constraint job.ck_job_progress"],
    ),
    "unique constraint": (
        '    op.create_unique_constraint("uq_job_message", "job", ["message"])',
        ["validated_constraint job.uq_job_message"],
    ),
    "wider integer": (
        '    op.alter_column("job", "eta", existing_type=sa.Integer(), type_=sa.BigInteger())',
        ["rewriting_type job.eta"],
    ),
    "integer to text": (
        '    op.alter_column("job", "eta", existing_type=sa.Integer(), type_=sa.String())',
        ["rewriting_type job.eta"],
    ),
    "rename a column": (
        '    op.alter_column("job", "message", new_column_name="note")',
        ["rename_column job.message"],
    ),
    "rename a table": ('    op.rename_table("job", "download")', ["rename_table job"]),
}

HARMLESS = {
    "nullable column": '    op.add_column("job", sa.Column("note", sa.String(), nullable=True))',
    "NOT NULL column with a server default": (
        '    op.add_column("job", sa.Column("n", sa.Integer(), server_default="0", nullable=False))'
    ),
    "unbounded string": (
        '    op.alter_column("job", "status", existing_type=sa.String(10), type_=sa.String())'
    ),
    "longer string": (
        '    op.alter_column("job", "status", existing_type=sa.String(10), type_=sa.String(20))'
    ),
    "string to text": (
        '    op.alter_column("job", "status", existing_type=sa.String(), type_=sa.Text())'
    ),
    "new table": '    op.create_table("t", sa.Column("id", sa.Integer(), nullable=False))',
    "index, constraint, NOT NULL and rename on a new table": (
        '    op.create_table("t", sa.Column("id", sa.Integer(), nullable=True))\n'
        '    op.create_index("ix_t_id", "t", ["id"])\n'
        '    op.create_unique_constraint("uq_t_id", "t", ["id"])\n'
        '    op.create_foreign_key("fk_t_job", "t", "job", ["id"], ["eta"])\n'
        '    op.alter_column("t", "id", existing_type=sa.Integer(), type_=sa.BigInteger())\n'
        '    op.alter_column("t", "id", existing_type=sa.BigInteger(), nullable=False)\n'
        '    op.rename_table("t", "u")\n'
        '    op.alter_column("u", "id", new_column_name="key")'
    ),
    "concurrent index in an autocommit block": (
        "    with op.get_context().autocommit_block():\n"
        '        op.create_index("ix_job_message", "job", ["message"], '
        "postgresql_concurrently=True)"
    ),
    "check NOT VALID, VALIDATE, then SET NOT NULL": (
        "    op.execute(\"UPDATE job SET message = '' WHERE message IS NULL\")\n"
        f"{NOT_VALID_CHECK}\n"
        f"{AUTOCOMMIT_BLOCK}\n"
        '        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_message_not_null")\n'
        '        op.alter_column("job", "message", existing_type=sa.String(), nullable=False)\n'
        '        op.drop_constraint("ck_job_message_not_null", "job", type_="check")'
    ),
    "check NOT VALID in SQL, VALIDATE, then SET NOT NULL, all in an autocommit block": (
        f"{AUTOCOMMIT_BLOCK}\n"
        "        op.execute(\n"
        "            'ALTER TABLE job ADD CONSTRAINT ck_job_message_not_null '\n"
        "            'CHECK (message IS NOT NULL) NOT VALID'\n"
        "        )\n"
        '        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_message_not_null")\n'
        '        op.alter_column("job", "message", existing_type=sa.String(), nullable=False)'
    ),
    "foreign key NOT VALID, then VALIDATE in an autocommit block": (
        "    op.create_foreign_key(\n"
        '        "fk_task_job", "clienttask", "job", ["job_id"], ["id"], '
        "postgresql_not_valid=True\n"
        "    )\n"
        f"{AUTOCOMMIT_BLOCK}\n"
        '        op.execute("ALTER TABLE clienttask VALIDATE CONSTRAINT fk_task_job")'
    ),
    "check NOT VALID": (
        "    op.create_check_constraint(\n"
        '        "ck_job_progress", "job", "progress >= 0", postgresql_not_valid=True\n'
        "    )"
    ),
    "unique index built concurrently, then the constraint using it": (
        "    with op.get_context().autocommit_block():\n"
        "        op.create_index(\n"
        '            "uq_job_message", "job", ["message"], unique=True, '
        "postgresql_concurrently=True\n"
        "        )\n"
        '    op.execute("ALTER TABLE job ADD CONSTRAINT uq_job_message '
        'UNIQUE USING INDEX uq_job_message")'
    ),
}


def findings_of(tmp_path: Path, body: str, acknowledgements: str = "") -> list:
    versions = tmp_path / "versions"
    versions.mkdir(parents=True)
    (versions / "aaaaaaaaaaaa_lint.py").write_text(
        REVISION.format(body=body, acknowledgements=acknowledgements)
    )
    return lint_revisions(ScriptDirectory(str(tmp_path)))


def lint_one(tmp_path: Path, body: str, acknowledgements: str = "") -> list[str]:
    return [finding.key for finding in findings_of(tmp_path, body, acknowledgements)]


def test_every_revision_of_the_project_passes_the_lint() -> None:
    """Released revisions included: none may lose data without saying so."""
    assert [str(finding) for finding in lint_revisions(script_directory())] == []


@pytest.mark.parametrize("case", sorted(FLAGGED))
def test_an_operation_that_loses_data_or_locks_a_table_is_flagged(
    tmp_path: Path, case: str
) -> None:
    body, keys = FLAGGED[case]

    assert lint_one(tmp_path, body) == keys


@pytest.mark.parametrize("case", sorted(HARMLESS))
def test_an_operation_that_keeps_data_and_serving_is_not_flagged(tmp_path: Path, case: str) -> None:
    assert lint_one(tmp_path, HARMLESS[case]) == []


def test_an_acknowledged_operation_passes(tmp_path: Path) -> None:
    acknowledged = (
        'acknowledged_data_loss = {"drop_table job": "job was replaced by task in 2.0"}\n'
    )

    assert lint_one(tmp_path, FLAGGED["drop a table"][0], acknowledged) == []


@pytest.mark.parametrize(
    "acknowledged",
    ['acknowledged_data_loss = {"drop_table job": "  "}\n'],
    ids=["without a reason"],
)
def test_an_acknowledgement_needs_a_reason(tmp_path: Path, acknowledged: str) -> None:
    assert lint_one(tmp_path, FLAGGED["drop a table"][0], acknowledged) == ["drop_table job"]


def test_an_acknowledgement_of_an_operation_not_done_is_flagged(tmp_path: Path) -> None:
    acknowledged = 'acknowledged_data_loss = {"drop_table clienttask": "gone"}\n'

    assert lint_one(tmp_path, HARMLESS["nullable column"], acknowledged) == [
        "drop_table clienttask"
    ]


def test_a_lock_hazard_is_acknowledged_in_its_own_dict(tmp_path: Path) -> None:
    body = FLAGGED["index on an existing table"][0]
    reason = '{"index_not_concurrent job.ix_job_message": "job holds a few hundred rows"}'

    assert lint_one(tmp_path, body, f"acknowledged_lock_hazards = {reason}\n") == []
    assert lint_one(tmp_path / "other", body, f"acknowledged_data_loss = {reason}\n") == [
        "index_not_concurrent job.ix_job_message",
        "index_not_concurrent job.ix_job_message",
    ]


@pytest.mark.parametrize(
    ("case", "acknowledged"),
    [
        ("drop a table", 'acknowledged_data_loss = {"drop_table job": "replaced by task"}'),
        (
            "rename a column",
            'acknowledged_lock_hazards = {"rename_column job.message": "the code reads note"}',
        ),
    ],
)
def test_acknowledging_a_drop_or_rename_names_the_release_that_stopped_reading_it(
    tmp_path: Path, case: str, acknowledged: str
) -> None:
    body, keys = FLAGGED[case]
    with_release = acknowledged.replace('"}', ' since 0.4.0"}')

    assert lint_one(tmp_path, body, acknowledged + "\n") == keys
    assert lint_one(tmp_path / "with release", body, with_release + "\n") == []


def test_a_revision_that_cannot_run_offline_is_one_finding_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A data step reading rows through op.get_bind() has no connection when linted."""
    body = "    for row in op.get_bind().execute(sa.text('SELECT id FROM job')):\n        pass\n"
    (finding,) = findings_of(tmp_path, body)
    assert finding.key == "offline"
    assert "cannot be read offline (AttributeError" in finding.problem


def test_a_not_null_column_added_without_a_default_is_never_offered_an_acknowledgement(
    tmp_path: Path,
) -> None:
    """It fails on every table with rows, whatever the reason given."""
    body = FLAGGED["NOT NULL column without a server default"][0]
    acknowledged = 'acknowledged_data_loss = {"not_null job.seen_at": "job is small"}\n'

    (unacknowledged,) = findings_of(tmp_path, body)
    (refused,) = findings_of(tmp_path / "acknowledged", body, acknowledged)

    assert "fill_in_batches" in unacknowledged.problem and "acknowledge" not in str(unacknowledged)
    assert refused.key == "not_null job.seen_at"
    assert refused.problem == (
        f"cannot be acknowledged in acknowledged_data_loss: {unacknowledged.problem}"
    )
