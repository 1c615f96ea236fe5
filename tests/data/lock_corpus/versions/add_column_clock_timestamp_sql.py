"""A timestamp column defaulting to clock_timestamp(), in SQL."""

from alembic import op

revision = "add_column_clock_timestamp_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD COLUMN seen_at timestamptz DEFAULT clock_timestamp()")
