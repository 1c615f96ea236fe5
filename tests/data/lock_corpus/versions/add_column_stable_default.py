"""A timestamp column defaulting to now()."""

import sqlalchemy as sa
from alembic import op

revision = "add_column_stable_default"
down_revision = None


def upgrade() -> None:
    op.add_column(
        "job",
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.text("now()")),
    )
