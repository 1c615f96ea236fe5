"""Delete every other job."""

from alembic import op

revision = "fill_delete"
down_revision = None


def upgrade() -> None:
    op.execute("DELETE FROM job WHERE id % 2 = 0")
