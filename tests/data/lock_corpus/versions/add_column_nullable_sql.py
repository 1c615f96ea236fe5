"""A nullable column, in SQL."""

from alembic import op

revision = "add_column_nullable_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD COLUMN attempts integer")
