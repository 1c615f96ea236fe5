"""Fill job.note in batches, each committed on its own."""

from alembic import op

revision = "fill_in_committed_batches"
down_revision = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for first in range(1, 20_001, 5_000):
            op.execute(f"UPDATE job SET note = 'none' WHERE id BETWEEN {first} AND {first + 4_999}")
