"""Unique job.message as a constraint."""

from alembic import op

revision = "unique_constraint"
down_revision = None


def upgrade() -> None:
    op.create_unique_constraint("uq_job_message", "job", ["message"])
