"""An identity column."""

import sqlalchemy as sa
from alembic import op

revision = "add_column_identity"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False))
