"""A column on anime, then job.status from varchar(20) to text, in one transaction."""

import sqlalchemy as sa
from alembic import op

revision = "quick_column_then_varchar_to_text"
down_revision = None


def upgrade() -> None:
    op.add_column("anime", sa.Column("rating", sa.Integer(), nullable=True))
    op.alter_column("job", "status", existing_type=sa.String(20), type_=sa.Text())
