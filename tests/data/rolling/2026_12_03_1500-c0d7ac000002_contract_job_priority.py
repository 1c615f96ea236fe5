"""Contract: job.fixture_priority becomes NOT NULL, without a long exclusive lock.

The second half of the change that e5a7d1000001 started, shipped in a later
image, once no replica of the release before that one runs any more. A plain
SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock, which
stops every read. Instead:

* a server default, so rows inserted from now on are never NULL;
* the rows still NULL (inserted by the previous release after the expand's
  fill) are filled in batches, each its own transaction;
* a CHECK constraint added NOT VALID (no scan), then validated under a lock
  that lets reads and writes go on; SET NOT NULL then trusts the valid
  constraint instead of scanning (PostgreSQL 12 and later), and the
  constraint, now redundant, is dropped.

Like the expand revision, every step can run again after a failure inside the
autocommit block (a constraint left by the failed attempt is dropped first).

Revision ID: c0d7ac000002
Revises: e5a7d1000001
Create Date: 2026-12-03 15:00:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c0d7ac000002"
down_revision: str | Sequence[str] | None = "e5a7d1000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_ROWS = 1_000
CHECK_NAME = "ck_job_fixture_priority_not_null"
PRIORITY = "CASE WHEN status IN ('queued', 'downloading') THEN 1 ELSE 0 END"
FILL_NULLS = f"UPDATE job SET fixture_priority = {PRIORITY} WHERE fixture_priority IS NULL"


def upgrade() -> None:
    """Upgrade schema."""
    op.alter_column("job", "fixture_priority", server_default=sa.text("0"))
    with op.get_context().autocommit_block():
        fill_nulls()
        op.execute(f"ALTER TABLE job DROP CONSTRAINT IF EXISTS {CHECK_NAME}")
        op.execute(
            f"ALTER TABLE job ADD CONSTRAINT {CHECK_NAME} "
            "CHECK (fixture_priority IS NOT NULL) NOT VALID"
        )
        op.execute(f"ALTER TABLE job VALIDATE CONSTRAINT {CHECK_NAME}")
        op.alter_column("job", "fixture_priority", nullable=False)
        op.drop_constraint(op.f(CHECK_NAME), "job", type_="check")


def fill_nulls() -> None:
    """Fill the NULLs BATCH_ROWS at a time, each UPDATE its own transaction (one offline)."""
    if op.get_context().as_sql:
        op.execute(FILL_NULLS)
        return
    batch = sa.text(
        f"{FILL_NULLS} AND id IN (SELECT id FROM job WHERE fixture_priority IS NULL LIMIT :n)"
    )
    while op.get_bind().execute(batch, {"n": BATCH_ROWS}).rowcount:
        pass


def downgrade() -> None:
    """Downgrade schema."""
    op.alter_column("job", "fixture_priority", nullable=True, server_default=None)
