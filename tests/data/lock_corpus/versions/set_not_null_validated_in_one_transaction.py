"""job.status NOT NULL, the check validated where it was added."""

import sqlalchemy as sa
from alembic import op

revision = "set_not_null_validated_in_one_transaction"
down_revision = None


def upgrade() -> None:
    op.create_check_constraint(
        "ck_job_status_not_null", "job", "status IS NOT NULL", postgresql_not_valid=True
    )
    op.execute("ALTER TABLE job VALIDATE CONSTRAINT ck_job_status_not_null")
    op.alter_column("job", "status", existing_type=sa.String(20), nullable=False)
