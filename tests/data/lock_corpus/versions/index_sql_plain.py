"""Index job.status in SQL, in the transaction."""

from alembic import op

revision = "index_sql_plain"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_job_status ON job (status)")
