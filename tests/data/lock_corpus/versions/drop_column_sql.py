"""Drop job.note, in SQL."""

from alembic import op

revision = "drop_column_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job DROP COLUMN note")
