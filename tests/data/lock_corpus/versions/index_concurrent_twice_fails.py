"""Index job.status concurrently without IF NOT EXISTS."""

from alembic import op

revision = "index_concurrent_twice_fails"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_job_status", "job", ["status"], postgresql_concurrently=True)
