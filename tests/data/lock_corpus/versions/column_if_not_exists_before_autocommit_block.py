"""A column on job (IF NOT EXISTS), then its index built concurrently."""

import sqlalchemy as sa
from alembic import op

revision = "column_if_not_exists_before_autocommit_block"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), nullable=True), if_not_exists=True)
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_job_attempts", "job", ["attempts"], postgresql_concurrently=True, if_not_exists=True
        )
