"""job.message from varchar(50) to varchar(30)."""

import sqlalchemy as sa
from alembic import op

revision = "varchar_shorter"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "message", existing_type=sa.String(50), type_=sa.String(30))
