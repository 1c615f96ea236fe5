"""A column on job, then its index built concurrently."""

import sqlalchemy as sa
from alembic import op

revision = "column_before_autocommit_block"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), nullable=True))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_job_attempts", "job", ["attempts"], postgresql_concurrently=True, if_not_exists=True
        )
