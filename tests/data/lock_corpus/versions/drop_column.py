"""Drop job.note."""

from alembic import op

revision = "drop_column"
down_revision = None


def upgrade() -> None:
    op.drop_column("job", "note")
