"""Rename anime to show, in SQL."""

from alembic import op

revision = "rename_table_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE anime RENAME TO show")
