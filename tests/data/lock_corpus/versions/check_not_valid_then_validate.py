"""job.eta is not negative: NOT VALID, then VALIDATE, each on its own."""

from alembic import op

revision = "check_not_valid_then_validate"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE job DROP CONSTRAINT IF EXISTS ck_job_eta")
        op.execute("ALTER TABLE job ADD CONSTRAINT ck_job_eta CHECK (eta >= 0) NOT VALID")
        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_eta")
