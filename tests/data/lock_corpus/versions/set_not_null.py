"""job.status NOT NULL."""

import sqlalchemy as sa
from alembic import op

revision = "set_not_null"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "status", existing_type=sa.String(20), nullable=False)
