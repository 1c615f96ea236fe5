"""Contract: fail the unfinished jobs that a release without job owners left.

The second half of the change that gave jobs an owner and a lease
(docs/replicas.md, "Whose jobs a start fails"), shipped in a later release,
once no replica of the release before the owners runs. Jobs without an owner
were created by that release; its replicas are gone, so no one runs them any
more, and they hold no lease that could run out. They are failed as a restart
failed them before, in batches along the primary key, each committed on its
own (app.migration.patterns.fill_in_batches): a rerun fails only the rows
still unfinished.

Revision ID: c0a5e0000003
Revises: the head it is planted on (tests/chain.py, plant_revisions)
Create Date: 2026-12-07 20:00:00+00:00

"""

from collections.abc import Sequence

from app.migration.patterns import fill_in_batches

revision: str = "c0a5e0000003"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNOWNED_UNFINISHED = "owner IS NULL AND status IN ('queued', 'downloading')"
FAILED = "status = 'failed', message = 'interrupted by a restart', updated_at = CURRENT_TIMESTAMP"


def upgrade() -> None:
    """Upgrade schema."""
    fill_in_batches("job", set_=FAILED, where=UNOWNED_UNFINISHED)


def downgrade() -> None:
    """Downgrade schema: the failed jobs stay failed, as a restart left them."""
