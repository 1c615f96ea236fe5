"""Drop the index on job.anime_id."""

from alembic import op

revision = "drop_index"
down_revision = None


def upgrade() -> None:
    op.drop_index("ix_job_anime_id", table_name="job")
