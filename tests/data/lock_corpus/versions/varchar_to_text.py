"""job.status from varchar(20) to text."""

import sqlalchemy as sa
from alembic import op

revision = "varchar_to_text"
down_revision = None


def upgrade() -> None:
    op.alter_column("job", "status", existing_type=sa.String(20), type_=sa.Text())
