"""Index job.status concurrently, in an autocommit block, safe to run twice."""

from alembic import op

revision = "index_concurrent"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_job_status", "job", ["status"], postgresql_concurrently=True, if_not_exists=True
        )
