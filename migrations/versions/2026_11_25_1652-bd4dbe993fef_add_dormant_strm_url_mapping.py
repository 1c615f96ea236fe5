"""Add the dormant strm_url_mapping table (written by future .strm refreshes).

Revision ID: bd4dbe993fef
Revises: 5cb5dab892ec
Create Date: 2026-11-25 16:52:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "bd4dbe993fef"
down_revision: str | Sequence[str] | None = "5cb5dab892ec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "strm_url_mapping",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("strm_path", sa.String(), nullable=False),
        sa.Column("resolved_url", sa.String(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("slug", sa.String(), nullable=False),
        sa.Column("season", sa.Integer(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("provider_used", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strm_url_mapping")),
        sa.UniqueConstraint("strm_path", name=op.f("uq_strm_url_mapping_strm_path")),
    )
    with op.batch_alter_table("strm_url_mapping", schema=None) as batch_op:
        batch_op.create_index(
            "ix_strm_url_mapping_episode_identity",
            ["slug", "season", "episode", "language", "site"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_strm_url_mapping_resolved_at"), ["resolved_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("strm_url_mapping", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_strm_url_mapping_resolved_at"))
        batch_op.drop_index("ix_strm_url_mapping_episode_identity")

    op.drop_table("strm_url_mapping")
