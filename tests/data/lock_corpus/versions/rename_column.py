"""Rename job.note to job.comment."""

from alembic import op

revision = "rename_column"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "note", new_column_name="comment")
