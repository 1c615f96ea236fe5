"""The migration history, as Flyway keeps `flyway_schema_history`.

One row for each revision applied, reverted or stamped, and one for each
adoption of a database made before migrations: the revision, the direction,
when it ran (UTC), how long it took, the AniBridge version that ran it, and the
SHA-256 of the revision file that ran.

The table belongs to the migration system, not to the models: it has its own
`MetaData`, autogenerate and `alembic check` skip it (`include_name`), and
adoption does not count it as an application table. Rows are written on the
run's own connection, inside its transaction: a run that fails leaves none. The
table is created by the first run that writes a row. A downgrade that reaches
base drops it: no revision is applied any more, so there is nothing left for it
to be a history of, and `alembic downgrade base` leaves only Alembic's own
`alembic_version` behind, as on a database that never migrated (what
pytest-alembic's `test_downgrade_leaves_no_trace` checks).
"""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app import app_version
from app.migration.manifest import file_checksum

HISTORY_TABLE = "anibridge_migration_history"

history_metadata = sa.MetaData()
history_table = sa.Table(
    HISTORY_TABLE,
    history_metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("revision", sa.String(32), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("duration_s", sa.Float(), nullable=False),
    sa.Column("app_version", sa.String(64), nullable=False),
    sa.Column("checksum", sa.String(64), nullable=True),
    sa.PrimaryKeyConstraint("id", name=f"pk_{HISTORY_TABLE}"),
)


@dataclass(frozen=True)
class HistoryRow:
    revision: str
    direction: str
    applied_at: str
    duration_s: float
    app_version: str
    checksum: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def revision_checksum(script: ScriptDirectory, revision: str) -> str | None:
    """The SHA-256 of `revision`'s file, or None when this release has no such file."""
    found = {rev.revision: rev for rev in script.walk_revisions()}.get(revision)
    return file_checksum(found.path) if found is not None else None


def is_migration_table(name: str | None, type_: str, _parent_names: Any) -> bool:
    """An `include_name` filter: keep everything but the history table out of comparisons."""
    return not (type_ == "table" and name == HISTORY_TABLE)


def record(
    connection: Connection,
    script: ScriptDirectory,
    revision: str,
    direction: str,
    duration_s: float,
) -> None:
    """Add a row for `revision`, creating the table first if this database has none yet."""
    history_table.create(connection, checkfirst=True)
    connection.execute(
        history_table.insert().values(
            revision=revision,
            direction=direction,
            applied_at=datetime.now(UTC),
            duration_s=round(duration_s, 6),
            app_version=app_version(),
            checksum=revision_checksum(script, revision),
        )
    )


class HistoryRecorder:
    """A listener of the run's `StepClock`: a row per step, adoption included; no table at base."""

    def __init__(self, script: ScriptDirectory) -> None:
        self.script = script

    def __call__(self, *, seconds: float, ctx=None, step=None, adoption=None, **_step) -> None:
        if adoption is not None:
            record(adoption.connection, self.script, adoption.revision, "adopt", seconds)
            return
        direction = "stamp" if step.is_stamp else "upgrade" if step.is_upgrade else "downgrade"
        if direction == "downgrade" and not ctx.get_current_heads():
            history_table.drop(ctx.connection, checkfirst=True)
            return
        for revision in step_revisions(step):
            record(ctx.connection, self.script, revision, direction, seconds)


def step_revisions(step) -> tuple[str, ...]:
    """The revisions a step applied or reverted; for a stamp, where it left the database."""
    if step.is_stamp:
        return step.destination_revision_ids or ("base",)
    return step.up_revision_ids if step.is_upgrade else (step.up_revision_id,)


def read_history(connection: Connection) -> list[HistoryRow]:
    """Every row, oldest first; none when the table does not exist (yet)."""
    if not sa.inspect(connection).has_table(HISTORY_TABLE):
        return []
    rows = connection.execute(history_table.select().order_by(history_table.c.id)).mappings()
    return [
        HistoryRow(
            revision=row["revision"],
            direction=row["direction"],
            applied_at=as_utc(row["applied_at"]).isoformat(),
            duration_s=row["duration_s"],
            app_version=row["app_version"],
            checksum=row["checksum"],
        )
        for row in rows
    ]


def as_utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def release_that_applied(history: list[HistoryRow], revision: str) -> HistoryRow | None:
    """The latest row that moved the database to `revision` (applied or stamped)."""
    rows = [
        row
        for row in history
        if row.revision == revision and row.direction in ("upgrade", "stamp", "adopt")
    ]
    return rows[-1] if rows else None


def applied_revisions(history: list[HistoryRow]) -> list[str]:
    """The revisions the history says the database holds, oldest first.

    Replayed row by row: an upgrade adds its revision, a downgrade takes its
    revision off, a stamp or an adoption starts again from its revision.
    """
    applied: list[str] = []
    for row in history:
        if row.direction == "upgrade":
            applied.append(row.revision)
        elif row.direction == "downgrade" and row.revision in applied:
            applied.remove(row.revision)
        elif row.direction in ("stamp", "adopt"):
            applied = [] if row.revision == "base" else [row.revision]
    return applied


COMPARE_OPTIONS = {
    "compare_type": True,
    "compare_server_default": True,
    "include_name": is_migration_table,
}
"""How autogenerate, `alembic check` and `anibridge status` compare the database with the models.

The migration system's own tables are left out: they are not models.
"""
