"""Baseline: the schema of the last release before migrations (multi-site).

Revision ID: 5cb5dab892ec
Revises:
Create Date: 2026-11-25 16:51:04.367824+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5cb5dab892ec"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "clienttask",
        sa.Column("hash", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("slug", sa.String(), nullable=False),
        sa.Column("season", sa.Integer(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=True),
        sa.Column("job_id", sa.String(), nullable=True),
        sa.Column("save_path", sa.String(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("added_on", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completion_on", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_clienttask")),
    )
    with op.batch_alter_table("clienttask", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clienttask_added_on"), ["added_on"], unique=False)
        batch_op.create_index(batch_op.f("ix_clienttask_hash"), ["hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_clienttask_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_clienttask_site"), ["site"], unique=False)
        batch_op.create_index(batch_op.f("ix_clienttask_state"), ["state"], unique=False)

    op.create_table(
        "episodeavailability",
        sa.Column("slug", sa.String(), nullable=False),
        sa.Column("season", sa.Integer(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("available", sa.Boolean(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("vcodec", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint(
            "slug", "season", "episode", "language", "site", name=op.f("pk_episodeavailability")
        ),
    )
    with op.batch_alter_table("episodeavailability", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_episodeavailability_checked_at"), ["checked_at"], unique=False
        )

    op.create_table(
        "job",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column(
            "downloaded_bytes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "total_bytes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("speed", sa.Float(), nullable=True),
        sa.Column("eta", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(), nullable=True),
        sa.Column("result_path", sa.String(), nullable=True),
        sa.Column("source_site", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job")),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_id"), ["id"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_source_site"), ["source_site"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_updated_at"))
        batch_op.drop_index(batch_op.f("ix_job_status"))
        batch_op.drop_index(batch_op.f("ix_job_source_site"))
        batch_op.drop_index(batch_op.f("ix_job_id"))
        batch_op.drop_index(batch_op.f("ix_job_created_at"))

    op.drop_table("job")
    with op.batch_alter_table("episodeavailability", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_episodeavailability_checked_at"))

    op.drop_table("episodeavailability")
    with op.batch_alter_table("clienttask", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clienttask_state"))
        batch_op.drop_index(batch_op.f("ix_clienttask_site"))
        batch_op.drop_index(batch_op.f("ix_clienttask_job_id"))
        batch_op.drop_index(batch_op.f("ix_clienttask_hash"))
        batch_op.drop_index(batch_op.f("ix_clienttask_added_on"))

    op.drop_table("clienttask")
