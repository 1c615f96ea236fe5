"""Expand: job.fixture_priority, nullable, filled in batches, then indexed concurrently.

The first half of an expand/contract change (docs/replicas.md). Every step
leaves a schema the previous release still serves from: its SELECTs name
their columns, and its INSERTs leave the new column NULL. No step holds a
lock that stops the service's reads or writes for longer than a catalogue
update:

* ADD COLUMN without a default changes only the catalogue;
* the fill (`fill_in_batches`) commits the run's transaction first, then
  runs in batches of about 25 ms each, each its own short transaction, so no
  row stays locked for long;
* the index is built CONCURRENTLY, which needs no transaction around it
  (`autocommit_block`), and after the fill: built before it, every row the
  fill updates would also get an entry in it.

Rows the previous release inserts after its batch stay NULL; the contract
revision fills them before it makes the column NOT NULL.

What ran before a failure inside an autocommit block stays committed, while
alembic_version still names the previous revision: the next run starts this
revision again from the top. So every step can run twice: the column is added
only if missing, the fill continues with the rows still NULL, and an index an
interrupted build left (INVALID, and unused by queries) is dropped and built
again.

Revision ID: e5a7d1000001
Revises: the head it is planted on (tests/chain.py, plant_revisions)
Create Date: 2026-12-03 14:00:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.migration.patterns import fill_in_batches

revision: str = "e5a7d1000001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITY = "CASE WHEN status IN ('queued', 'downloading') THEN 1 ELSE 0 END"


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "job", sa.Column("fixture_priority", sa.Integer(), nullable=True), if_not_exists=True
    )
    fill_in_batches("job", set_=f"fixture_priority = {PRIORITY}", where="fixture_priority IS NULL")
    with op.get_context().autocommit_block():
        op.drop_index(
            op.f("ix_job_fixture_priority"),
            table_name="job",
            postgresql_concurrently=True,
            if_exists=True,
        )
        op.create_index(
            op.f("ix_job_fixture_priority"),
            "job",
            ["fixture_priority"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.get_context().autocommit_block():
        op.drop_index(
            op.f("ix_job_fixture_priority"), table_name="job", postgresql_concurrently=True
        )
    op.drop_column("job", "fixture_priority")
