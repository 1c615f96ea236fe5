"""job.eta is not negative, checked at once."""

from alembic import op

revision = "check_validated"
down_revision = None


def upgrade() -> None:
    op.create_check_constraint("ck_job_eta", "job", "eta >= 0")
