"""Drop anime."""

from alembic import op

revision = "drop_table"
down_revision = None


def upgrade() -> None:
    op.drop_table("anime")
