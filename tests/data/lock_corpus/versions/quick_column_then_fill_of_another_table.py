"""A column on anime, then a fill of job, in one transaction."""

import sqlalchemy as sa
from alembic import op

revision = "quick_column_then_fill_of_another_table"
down_revision = None


def upgrade() -> None:
    op.add_column("anime", sa.Column("rating", sa.Integer(), nullable=True))
    op.execute("UPDATE job SET note = 'none'")
