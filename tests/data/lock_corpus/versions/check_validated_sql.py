"""job.eta is not negative, checked at once, in SQL."""

from alembic import op

revision = "check_validated_sql"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD CONSTRAINT ck_job_eta CHECK (eta >= 0)")
