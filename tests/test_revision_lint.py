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
    "drop a table": ('    op.drop_table("job")', "drop_table job"),
    "drop a column in a batch": (
        '    with op.batch_alter_table("job") as batch_op:\n'
        '        batch_op.drop_column("message")',
        "drop_column job.message",
    ),
    "shorter string": (
        '    op.alter_column("job", "status", existing_type=sa.String(), type_=sa.String(10))',
        "narrow_type job.status",
    ),
    "smaller integer": (
        '    op.alter_column("job", "eta", existing_type=sa.BigInteger(), type_=sa.Integer())',
        "narrow_type job.eta",
    ),
    "text to integer": (
        '    op.alter_column("job", "message", existing_type=sa.String(), type_=sa.Integer())',
        "narrow_type job.message",
    ),
    "type change without the old type": (
        '    op.alter_column("job", "message", type_=sa.Text())',
        "narrow_type job.message",
    ),
    "NOT NULL column without a server default": (
        '    op.add_column("job", sa.Column("seen_at", sa.DateTime(), nullable=False))',
        "not_null job.seen_at",
    ),
    "NOT NULL made without a fill": (
        '    op.alter_column("job", "message", existing_type=sa.String(), nullable=False)',
        "not_null job.message",
    ),
}

HARMLESS = {
    "nullable column": '    op.add_column("job", sa.Column("note", sa.String(), nullable=True))',
    "NOT NULL column with a server default": (
        '    op.add_column("job", sa.Column("n", sa.Integer(), server_default="0", nullable=False))'
    ),
    "fill, then NOT NULL": (
        '    op.add_column("job", sa.Column("seen_at", sa.DateTime(), nullable=True))\n'
        '    op.execute("UPDATE job SET seen_at = updated_at")\n'
        '    op.alter_column("job", "seen_at", existing_type=sa.DateTime(), nullable=False)'
    ),
    "wider integer": (
        '    op.alter_column("job", "eta", existing_type=sa.Integer(), type_=sa.BigInteger())'
    ),
    "unbounded string": (
        '    op.alter_column("job", "status", existing_type=sa.String(10), type_=sa.String())'
    ),
    "integer to text": (
        '    op.alter_column("job", "eta", existing_type=sa.Integer(), type_=sa.String())'
    ),
    "rename": '    op.alter_column("job", "message", new_column_name="note")',
    "new table": '    op.create_table("t", sa.Column("id", sa.Integer(), nullable=False))',
}


def lint_one(tmp_path: Path, body: str, acknowledgements: str = "") -> list[str]:
    versions = tmp_path / "versions"
    versions.mkdir(parents=True)
    (versions / "aaaaaaaaaaaa_lint.py").write_text(
        REVISION.format(body=body, acknowledgements=acknowledgements)
    )
    return [finding.key for finding in lint_revisions(ScriptDirectory(str(tmp_path)))]


def test_every_revision_of_the_project_passes_the_lint() -> None:
    """Released revisions included: none may lose data without saying so."""
    assert [str(finding) for finding in lint_revisions(script_directory())] == []


@pytest.mark.parametrize("case", sorted(FLAGGED))
def test_an_operation_that_loses_data_is_flagged(tmp_path: Path, case: str) -> None:
    body, key = FLAGGED[case]

    assert lint_one(tmp_path, body) == [key]


@pytest.mark.parametrize("case", sorted(HARMLESS))
def test_an_operation_that_keeps_data_is_not_flagged(tmp_path: Path, case: str) -> None:
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
