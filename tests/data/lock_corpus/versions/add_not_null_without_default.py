"""A NOT NULL column without a default."""

import sqlalchemy as sa
from alembic import op

revision = "add_not_null_without_default"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), nullable=False))
