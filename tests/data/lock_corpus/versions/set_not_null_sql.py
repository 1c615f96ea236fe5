"""job.status NOT NULL, in SQL."""

from alembic import op

revision = "set_not_null_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ALTER COLUMN status SET NOT NULL")
