"""Index job.status in the upgrade's transaction."""

from alembic import op

revision = "index_plain"
down_revision = None


def upgrade() -> None:
    op.create_index("ix_job_status", "job", ["status"])
