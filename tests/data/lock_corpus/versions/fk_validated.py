"""job.anime_id references anime, checked at once."""

from alembic import op

revision = "fk_validated"
down_revision = None


def upgrade() -> None:
    op.create_foreign_key("fk_job_anime_id_anime", "job", "anime", ["anime_id"], ["id"])
