"""job.eta from integer to bigint, in SQL."""

from alembic import op

revision = "integer_to_bigint_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ALTER COLUMN eta TYPE bigint")
