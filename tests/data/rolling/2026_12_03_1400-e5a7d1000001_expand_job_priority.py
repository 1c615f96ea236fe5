"""Expand: job.fixture_priority, nullable, indexed concurrently, filled in batches.

The first half of an expand/contract change (docs/replicas.md). Every step
leaves a schema the previous release still serves from: its SELECTs name
their columns, and its INSERTs leave the new column NULL. No step holds a
lock that stops the service's reads or writes for longer than a catalogue
update:

* ADD COLUMN without a default changes only the catalogue;
* the index is built CONCURRENTLY, which needs no transaction around it, so
  the run's transaction is committed first (`autocommit_block`);
* the fill runs in batches of BATCH_ROWS rows, each its own short
  transaction, so no row stays locked for long.

Rows the previous release inserts after its batch stay NULL; the contract
revision fills them before it makes the column NOT NULL.

What ran before a failure inside the autocommit block stays committed, while
alembic_version still names the previous revision: the next run starts this
revision again from the top. So every step can run twice: the column is added
only if missing, an index an interrupted build left (INVALID, and unused by
queries) is dropped and built again, and the fill writes the same values again.

Revision ID: e5a7d1000001
Revises: the head it is planted on (tests/chain.py, plant_revisions)
Create Date: 2026-12-03 14:00:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5a7d1000001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_ROWS = 1_000
PRIORITY = "CASE WHEN status IN ('queued', 'downloading') THEN 1 ELSE 0 END"
FILL_BATCH = sa.text(
    f"UPDATE job SET fixture_priority = {PRIORITY} "
    "WHERE id IN (SELECT id FROM job WHERE id > :after ORDER BY id LIMIT :batch) "
    "RETURNING id"
)


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "job", sa.Column("fixture_priority", sa.Integer(), nullable=True), if_not_exists=True
    )
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
        fill_priority()


def fill_priority() -> None:
    """Walk the primary key in batches; each UPDATE commits on its own.

    Offline (`alembic upgrade --sql`, the revision lint) there are no rows to
    walk: the fill is written as the one statement the batches add up to.
    """
    if op.get_context().as_sql:
        op.execute(f"UPDATE job SET fixture_priority = {PRIORITY}")
        return
    connection, after = op.get_bind(), ""
    while ids := connection.execute(FILL_BATCH, {"after": after, "batch": BATCH_ROWS}).all():
        after = max(row.id for row in ids)


def downgrade() -> None:
    """Downgrade schema."""
    with op.get_context().autocommit_block():
        op.drop_index(
            op.f("ix_job_fixture_priority"), table_name="job", postgresql_concurrently=True
        )
    op.drop_column("job", "fixture_priority")
