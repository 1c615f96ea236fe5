"""A column on anime, then a validation of job's old rows, in one transaction."""

import sqlalchemy as sa
from alembic import op

revision = "quick_column_then_validate"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE job DROP CONSTRAINT IF EXISTS ck_job_eta")
        op.execute("ALTER TABLE job ADD CONSTRAINT ck_job_eta CHECK (eta >= 0) NOT VALID")
    op.add_column("anime", sa.Column("rating", sa.Integer(), nullable=True))
    op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_eta")
