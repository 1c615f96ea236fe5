"""A check added NOT VALID, then validated on its own."""

from alembic import op

revision = "constraint_before_autocommit_block"
down_revision = None


def upgrade() -> None:
    op.execute("ALTER TABLE job ADD CONSTRAINT ck_job_eta CHECK (eta >= 0) NOT VALID")
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_eta")
