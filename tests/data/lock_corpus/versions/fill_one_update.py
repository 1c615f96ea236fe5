"""Fill job.note in one UPDATE."""

from alembic import op

revision = "fill_one_update"
down_revision = None


def upgrade() -> None:
    op.execute("UPDATE job SET note = 'none'")
