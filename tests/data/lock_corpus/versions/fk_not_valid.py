"""job.anime_id references anime, old rows not checked."""

from alembic import op

revision = "fk_not_valid"
down_revision = None


def upgrade() -> None:
    op.create_foreign_key(
        "fk_job_anime_id_anime", "job", "anime", ["anime_id"], ["id"], postgresql_not_valid=True
    )
