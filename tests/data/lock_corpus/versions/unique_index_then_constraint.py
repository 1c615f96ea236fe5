"""Unique job.message: index built concurrently, then adopted."""

from alembic import op

revision = "unique_index_then_constraint"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "uq_job_message",
            "job",
            ["message"],
            unique=True,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
    op.execute("ALTER TABLE job ADD CONSTRAINT uq_job_message UNIQUE USING INDEX uq_job_message")
