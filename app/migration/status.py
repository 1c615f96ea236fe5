"""`anibridge status`: where the database stands, without changing or waiting for anything.

Like Flyway's `info` and Prisma's `migrate status`: the state, the current and
head revisions, what an upgrade would apply, the SQLite backups, the migration
history, revisions whose file changed since they ran, and how the live schema
differs from the models (as `alembic check` would say, in words).

Strictly read-only: the SQLite file is opened with `mode=ro` (a missing file is
reported empty, not created), PostgreSQL sessions are read-only, no upgrade
lock is taken, and a lock held by a running upgrade is only looked at. The URL
is shown with its password masked. The one write is a scratch schema that
recognising an unversioned PostgreSQL database builds inside a transaction that
is always rolled back (see `adoption_verdict`).

The state is the verdict the upgrade would reach, from the same functions:
`empty`, `unversioned` (naming the release schema an upgrade adopts), `refused`
(in the upgrade's own words), `pending`, `at_head`, `newer`.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData

from app.config import Settings
from app.migration.adoption.adopt import has_unversioned_app_tables, recognise_unversioned_database
from app.migration.adoption.schema_shape import describe_difference, flatten
from app.migration.backup import list_backups, read_backup_name
from app.migration.connection import connect_for_migrations, upgrade_file_refusal
from app.migration.errors import UnknownSchemaError
from app.migration.journal import (
    COMPARE_OPTIONS,
    HistoryRow,
    read_history,
)
from app.migration.locking import upgrade_running
from app.migration.manifest import file_checksum
from app.migration.revisions import (
    current_heads,
    migration_context,
    newer_database_refusal,
    plan_run,
    script_directory,
    single_head,
    unknown_revisions,
)


@dataclass
class DatabaseStatus:
    database: str
    state: str
    current: list[str]
    heads: list[str]
    pending: list[str]
    upgrade_running: bool
    backups: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    drift: list[str] | None = None
    message: str = ""

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def database_status(settings: Settings, target_metadata: MetaData | None = None) -> DatabaseStatus:
    """Everything `anibridge status` shows, read in one read-only connection.

    The schema is compared with `target_metadata` (the models) when it is given
    and the database is at head; the caller hands the models in, so this
    subsystem never imports them.
    """
    settings = dataclasses.replace(settings, connect_retries=0)
    script = script_directory()
    single_head(script)
    with connect_for_migrations(settings, read_only=True) as connection:
        running = upgrade_running(connection, settings.database_url)
        current = current_heads(connection)
        history = read_history(connection)
        status = DatabaseStatus(
            database=settings.database_url.render_as_string(hide_password=True),
            state="",
            current=list(current),
            heads=list(script.get_heads()),
            pending=[],
            upgrade_running=running,
            backups=backups_of(settings),
            history=[row.as_dict() for row in history],
            edited=edited_revisions(script, current, history),
        )
        refusal = upgrade_file_refusal(settings)
        fill_state(status, script, connection, settings, target_metadata, refusal)
    return status


def fill_state(
    status: DatabaseStatus,
    script: ScriptDirectory,
    connection: Connection,
    settings: Settings,
    target_metadata: MetaData | None,
    file_refusal: str | None,
) -> None:
    """The verdict the upgrade would reach, decided by the code the upgrade runs.

    `file_refusal` is the upgrade's first check, made before it reads a revision.
    """
    current = tuple(status.current)
    newer = newer_database_refusal(script, connection, current, settings)
    if newer is None:
        status.pending = list(plan_run(script, current, "heads").revisions)
    if file_refusal is not None:
        status.state, status.message = "refused", file_refusal
    elif newer is not None:
        status.state, status.message = "newer", newer
    elif has_unversioned_app_tables(connection, current):
        status.state, status.message = adoption_verdict(connection, script)
    elif not current:
        status.state = "empty"
    else:
        status.state = "pending" if status.pending else "at_head"
    if current and newer is None and not status.pending and target_metadata is not None:
        status.drift = schema_drift(connection, target_metadata)


def adoption_verdict(connection: Connection, script: ScriptDirectory) -> tuple[str, str]:
    """("unversioned", the schema an upgrade adopts) or ("refused", the upgrade's own words).

    On PostgreSQL the recognition builds the baseline in a scratch schema, which
    needs a writable transaction; it is always rolled back, so nothing is kept.
    """
    if connection.dialect.name == "postgresql":
        connection.rollback()
        connection.exec_driver_sql("SET TRANSACTION READ WRITE")
    try:
        known = recognise_unversioned_database(connection, script)
    except UnknownSchemaError as exc:
        return "refused", str(exc)
    finally:
        connection.rollback()
    return "unversioned", f"an upgrade adopts it as {known.description}"


def backups_of(settings: Settings) -> list[dict[str, Any]]:
    """The SQLite backups of this database, oldest first; none on PostgreSQL."""
    if not settings.is_sqlite:
        return []
    database = Path(settings.database_url.database)
    backups_dir = settings.backups_dir
    found = []
    for path in list_backups(backups_dir, database) if backups_dir.is_dir() else []:
        revision, created = read_backup_name(path, database)
        stat = path.stat()
        created = created or datetime.fromtimestamp(stat.st_mtime, UTC)
        found.append(
            {
                "path": str(path),
                "bytes": stat.st_size,
                "created": created.isoformat(),
                "revision": revision,
            }
        )
    return found


def edited_revisions(
    script: ScriptDirectory, current: tuple[str, ...], history: list[HistoryRow]
) -> list[str]:
    """Applied revisions whose file no longer has the checksum it had when it ran.

    On a database a newer release upgraded, every revision this release has was applied.
    """
    revisions = (
        script.walk_revisions()
        if unknown_revisions(script, current)
        else script.iterate_revisions(current, "base")
    )
    applied = {rev.revision: rev for rev in revisions}
    ran = {
        row.revision: row.checksum
        for row in history
        if row.direction in ("upgrade", "adopt") and row.checksum
    }
    return [
        revision
        for revision, rev in reversed(applied.items())
        if revision in ran and ran[revision] != file_checksum(rev.path)
    ]


def schema_drift(connection: Connection, metadata: MetaData) -> list[str]:
    """The differences `alembic check` would report, one sentence each."""
    context = migration_context(connection, **COMPARE_OPTIONS)
    return [describe_difference(diff) for diff in flatten(compare_metadata(context, metadata))]


def render(status: DatabaseStatus) -> str:
    """The human-readable report."""
    lines = [
        f"database:         {status.database}",
        f"state:            {describe_state(status)}",
        f"current revision: {', '.join(status.current) or 'none'}",
        f"head revision:    {', '.join(status.heads)}",
        f"pending:          {', '.join(status.pending) or 'nothing'}",
        f"upgrade running:  {'yes' if status.upgrade_running else 'no'}",
        f"edited since run: {', '.join(status.edited) or 'none'}",
        f"schema drift:     {describe_drift(status.drift)}",
    ]
    lines.extend(f"  - {difference}" for difference in status.drift or [])
    lines.append(f"backups:          {len(status.backups) or 'none'}")
    lines.extend(
        f"  {b['created']}  {b['revision'] or 'unversioned':<12}  {b['bytes']:>12} bytes  "
        f"{b['path']}"
        for b in status.backups
    )
    lines.append(f"history:          {len(status.history) or 'none'}")
    lines.extend(
        f"  {row['applied_at']}  {row['direction']:<9}  {row['revision']:<12}  "
        f"{row['duration_s']:8.3f} s  AniBridge {row['app_version']}"
        for row in status.history
    )
    return "\n".join(lines)


STATE_WORDS = {
    "empty": "empty (an upgrade creates the schema)",
    "pending": "behind head (run `alembic upgrade head` or start the service)",
    "at_head": "at head",
}


def describe_state(status: DatabaseStatus) -> str:
    if status.state == "unversioned":
        return f"unversioned (made before migrations; {status.message})"
    return STATE_WORDS.get(status.state, f"{status.state}: {status.message}")


def describe_drift(drift: list[str] | None) -> str:
    if drift is None:
        return "not compared (the database is not at head)"
    return f"{len(drift)} difference(s) from the models" if drift else "none"
