"""job.status NOT NULL after a check validated in its own transaction."""

import sqlalchemy as sa
from alembic import op

revision = "set_not_null_proven"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("ALTER TABLE job DROP CONSTRAINT IF EXISTS ck_job_status_not_null")
        op.create_check_constraint(
            "ck_job_status_not_null", "job", "status IS NOT NULL", postgresql_not_valid=True
        )
        op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_status_not_null")
    op.alter_column("job", "status", existing_type=sa.String(20), nullable=False)
    op.drop_constraint("ck_job_status_not_null", "job", type_="check")
