"""A NOT NULL column with a constant default."""

import sqlalchemy as sa
from alembic import op

revision = "add_not_null_with_default"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
