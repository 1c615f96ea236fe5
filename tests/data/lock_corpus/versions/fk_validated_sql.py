"""job.anime_id references anime, checked at once, in SQL."""

from alembic import op

revision = "fk_validated_sql"
down_revision = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE job ADD CONSTRAINT fk_job_anime_id_anime "
        "FOREIGN KEY (anime_id) REFERENCES anime (id)"
    )
