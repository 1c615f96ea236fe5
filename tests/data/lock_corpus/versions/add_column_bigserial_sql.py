"""A bigserial column, in SQL."""

from alembic import op

revision = "add_column_bigserial_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD COLUMN seq bigserial")
