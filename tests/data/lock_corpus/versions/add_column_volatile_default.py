"""A uuid column filled by gen_random_uuid()."""

import sqlalchemy as sa
from alembic import op

revision = "add_column_volatile_default"
down_revision = None


def upgrade() -> None:
    op.add_column(
        "job",
        sa.Column("token", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=True),
    )
