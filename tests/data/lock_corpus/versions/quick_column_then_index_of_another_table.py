"""A column on anime, then an index on job, in one transaction."""

import sqlalchemy as sa
from alembic import op

revision = "quick_column_then_index_of_another_table"
down_revision = None


def upgrade() -> None:
    op.add_column("anime", sa.Column("rating", sa.Integer(), nullable=True))
    op.create_index("ix_job_status", "job", ["status"])
