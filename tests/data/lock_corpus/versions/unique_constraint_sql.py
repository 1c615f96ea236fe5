"""Unique job.message as a constraint, in SQL."""

from alembic import op

revision = "unique_constraint_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD CONSTRAINT uq_job_message UNIQUE (message)")
