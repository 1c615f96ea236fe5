"""A nullable column."""

import sqlalchemy as sa
from alembic import op

revision = "add_column_nullable"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), nullable=True))
