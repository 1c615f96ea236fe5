"""The safe upgrade: what `migrations/env.py` wraps around every online run.

One function, `guarded_migrations`, turns Alembic's plain run into:

1. the upgrade lock (concurrent starters queue, then find nothing to do);
2. one transaction around everything (all or nothing, on SQLite too);
3. a refusal when the database is at a revision this code does not know;
4. for `upgrade`: adoption of unversioned databases and, on SQLite, a backup
   before the first change; a downgrade, which may drop tables and their rows,
   is backed up too;
5. after the revisions ran: a foreign-key check on SQLite, then commit.

`upgrade_database` is the in-process entry point used at start-up and by the
`anibridge migrate` command; it hands its connection to Alembic so both paths
run the same env.py.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from app.config import Settings
from app.db.adoption import (
    adopt_legacy_database,
    has_unversioned_app_tables,
    recognise_unversioned_database,
)
from app.db.backup import backup_database
from app.db.connect import connect_for_migrations
from app.db.errors import DatabaseNewerThanCodeError, MigrationError
from app.db.locking import sqlite_upgrade_lock, take_postgres_upgrade_lock

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


@dataclass(frozen=True)
class UpgradePlan:
    command: str
    current: tuple[str, ...]
    destination: str | None


def alembic_config(
    connection: Connection | None = None, settings: Settings | None = None
) -> Config:
    """Alembic's config for this project, usable from any working directory.

    A connection or settings given here reach env.py through `config.attributes`;
    without them env.py opens its own connection from the environment's settings.
    """
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    if settings is not None:
        config.attributes["settings"] = settings
        config.attributes["skip_logging_setup"] = True
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def current_heads(connection: Connection) -> tuple[str, ...]:
    return MigrationContext.configure(connection).get_current_heads()


def running_command(migration_context: MigrationContext) -> str:
    """Which Alembic command started this run (`upgrade`, `downgrade`, `do_stamp`, ...).

    Alembic passes the command's step function as the `fn` option; its name is
    the only place the command shows inside env.py for CLI and in-process runs alike.
    """
    return getattr(migration_context.opts.get("fn"), "__name__", "")


def refuse_unknown_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [head for head in heads if head not in known]
    if unknown:
        raise DatabaseNewerThanCodeError(
            f"the database is at revision {', '.join(unknown)}, which this release does not "
            "know: it was upgraded by a newer release; run that release (or newer), or "
            "restore the backup taken before that upgrade (DATA_DIR/backups)"
        )


def pending_upgrade_steps(script: ScriptDirectory, plan: UpgradePlan) -> int:
    if plan.destination is None:
        return 0
    return len(script._upgrade_revs(plan.destination, plan.current))


def own_transaction(connection: Connection) -> AbstractContextManager:
    """Begin the transaction, unless the caller handed in a connection already inside one."""
    return nullcontext() if connection.in_transaction() else connection.begin()


@contextmanager
def guarded_migrations(
    env: EnvironmentContext, connection: Connection, settings: Settings, **options: Any
) -> Iterator[None]:
    """Configure `env` on `connection` and wrap its run in the protections listed above."""
    timeout = settings.migration_lock_timeout
    with sqlite_upgrade_lock(connection, timeout), own_transaction(connection):
        take_postgres_upgrade_lock(connection, timeout)
        timer = RevisionTimer()
        env.configure(connection=connection, on_version_apply=timer, **options)
        migration_context = env.get_context()
        plan = UpgradePlan(
            running_command(migration_context),
            migration_context.get_current_heads(),
            migration_context.opts.get("destination_rev"),
        )
        if plan.command != "do_stamp":
            refuse_unknown_revisions(env.script, plan.current)
        if plan.command == "upgrade":
            prepare_upgrade(env.script, connection, plan, settings)
        elif plan.command == "downgrade" and plan.current:
            backup_if_sqlite(connection, plan.current[0], settings)
        timer.restart()
        yield
        if connection.dialect.name == "sqlite":
            require_foreign_keys_intact(connection)


def prepare_upgrade(
    script: ScriptDirectory, connection: Connection, plan: UpgradePlan, settings: Settings
) -> None:
    """Adopt a legacy database, log the starting point, and back up if anything will change.

    An unversioned database is recognised before the backup: one that is refused
    leaves no backup behind to push older ones out.
    """
    if has_unversioned_app_tables(connection, plan.current):
        known = recognise_unversioned_database(connection, script)
        backup_if_sqlite(connection, None, settings)
        adopted = adopt_legacy_database(connection, script, known)
        plan = UpgradePlan(plan.command, (adopted,), plan.destination)
    elif plan.current and pending_upgrade_steps(script, plan):
        backup_if_sqlite(connection, plan.current[0], settings)
    if not pending_upgrade_steps(script, plan):
        log.info("Database is up to date at revision %s", ", ".join(plan.current) or "base")


def backup_if_sqlite(connection: Connection, revision: str | None, settings: Settings) -> None:
    if connection.dialect.name == "sqlite":
        database = Path(connection.engine.url.database)
        backup_database(database, settings.data_dir / "backups", revision, settings.backup_keep)


def require_foreign_keys_intact(connection: Connection) -> None:
    """Refuse to commit an upgrade that left dangling references (checked with FKs off)."""
    broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise MigrationError(
            f"the upgrade would leave rows with broken foreign keys in {', '.join(tables)}; "
            "nothing was changed"
        )


class RevisionTimer:
    """An `on_version_apply` callback that logs each revision with its duration."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, *, step, **_kwargs) -> None:
        now = time.perf_counter()
        direction = "Applied" if step.is_upgrade else "Reverted"
        log.info("%s revision %s in %.3f s", direction, step.up_revision_id, now - self.last)
        self.last = now


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Upgrade the configured database in-process, through the same env.py as the CLI."""
    with connect_for_migrations(settings) as connection:
        config = alembic_config(connection, settings)
        config.attributes["skip_models"] = True
        command.upgrade(config, revision)


def database_revision(settings: Settings) -> tuple[str, ...]:
    with connect_for_migrations(settings, read_only=True) as connection:
        return current_heads(connection)


def require_database_at_head(settings: Settings) -> None:
    """For DB_MIGRATE_ON_STARTUP=false: refuse to serve a database not at head."""
    script = script_directory()
    current = database_revision(settings)
    refuse_unknown_revisions(script, current)
    heads = set(script.get_heads())
    if set(current) != heads:
        raise MigrationError(
            f"the database is at revision {', '.join(current) or 'none'} but this release "
            f"needs {', '.join(sorted(heads))}; run `alembic upgrade head` (or start with "
            "DB_MIGRATE_ON_STARTUP=true)"
        )
