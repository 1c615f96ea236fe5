"""job.eta from integer to bigint."""

import sqlalchemy as sa
from alembic import op

revision = "integer_to_bigint"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "eta", existing_type=sa.Integer(), type_=sa.BigInteger())
