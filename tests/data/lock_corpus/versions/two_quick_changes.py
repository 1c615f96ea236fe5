"""Two catalogue-only changes in one transaction."""

import sqlalchemy as sa
from alembic import op

revision = "two_quick_changes"
down_revision = None


def upgrade() -> None:
    op.add_column("job", sa.Column("attempts", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "fk_job_anime_id_anime", "job", "anime", ["anime_id"], ["id"], postgresql_not_valid=True
    )
