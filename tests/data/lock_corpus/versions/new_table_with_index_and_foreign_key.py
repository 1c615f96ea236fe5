"""A new table with an index and a foreign key to job."""

import sqlalchemy as sa
from alembic import op

revision = "new_table_with_index_and_foreign_key"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "job_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Text(), nullable=True),
    )
    op.create_index("ix_job_log_job_id", "job_log", ["job_id"])
    op.create_foreign_key("fk_job_log_job_id_job", "job_log", "job", ["job_id"], ["id"])
