"""job.anime_id references anime: NOT VALID and VALIDATE in one transaction, in SQL."""

from alembic import op

revision = "fk_not_valid_validate_in_one_transaction"
down_revision = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE job ADD CONSTRAINT fk_job_anime_id_anime "
        "FOREIGN KEY (anime_id) REFERENCES anime (id) NOT VALID"
    )
    op.execute("ALTER TABLE job VALIDATE CONSTRAINT fk_job_anime_id_anime")
