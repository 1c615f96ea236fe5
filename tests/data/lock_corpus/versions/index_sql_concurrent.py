"""Index job.status concurrently in SQL, in an autocommit block."""

from alembic import op

revision = "index_sql_concurrent"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_job_status ON job (status)")
