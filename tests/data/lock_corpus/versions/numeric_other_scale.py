"""job.price from numeric(10,2) to numeric(12,3)."""

import sqlalchemy as sa
from alembic import op

revision = "numeric_other_scale"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "price", existing_type=sa.Numeric(10, 2), type_=sa.Numeric(12, 3))
