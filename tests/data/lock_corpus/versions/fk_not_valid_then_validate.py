"""job.anime_id references anime: NOT VALID, then VALIDATE, each on its own."""

from alembic import op

revision = "fk_not_valid_then_validate"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE job DROP CONSTRAINT IF EXISTS fk_job_anime_id_anime")
        op.create_foreign_key(
            "fk_job_anime_id_anime", "job", "anime", ["anime_id"], ["id"], postgresql_not_valid=True
        )
        op.execute("ALTER TABLE job VALIDATE CONSTRAINT fk_job_anime_id_anime")
