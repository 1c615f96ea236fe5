"""The safe upgrade: what `migrations/env.py` wraps around every online run.

Runs that only read (`alembic current`, `check`, `history`) take none of this:
`writes_to_database` tells them apart, and env.py runs them on a read-only
connection. For the others, `guarded_migrations` turns Alembic's plain run into:

1. the upgrade lock (concurrent starters queue, then find nothing to do);
2. one transaction around everything (all or nothing, on SQLite too);
3. a refusal when the database is at a revision this code does not know;
4. adoption of unversioned databases when the run goes up and, on SQLite, a
   backup before the first change (a downgrade, which may drop tables and
   their rows, is backed up too);
5. on SQLite, the user's views and triggers set aside while revisions run
   (a batch-mode table rebuild fails on them otherwise; see app.migration.views_and_triggers);
6. after the revisions ran: a foreign-key check on SQLite, then commit; only
   then are the revisions logged as applied and old backups pruned;
7. any failure becomes one line that says the run was rolled back and names
   the backup holding the database as it was before.

`upgrade_database` is the in-process entry point used at start-up and by the
`anibridge migrate` command; it hands its connection to Alembic so both paths
run the same env.py.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from app import app_version
from app.config import Settings
from app.migration.adoption.adopt import (
    adopt_legacy_database,
    has_unversioned_app_tables,
    recognise_unversioned_database,
)
from app.migration.backup import backup_database, prune_backups
from app.migration.connection import connect_for_migrations, probe, require_migration_settings
from app.migration.errors import DatabaseNewerThanCodeError, MigrationError, describe_database_error
from app.migration.journal import HistoryRecorder, HistoryRow, record, release_that_applied
from app.migration.locking import sqlite_upgrade_lock, take_postgres_upgrade_lock
from app.migration.progress import RevisionHeartbeat
from app.migration.views_and_triggers import views_and_triggers_set_aside

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


@dataclass(frozen=True)
class RunPlan:
    """Where a writing run starts, where it goes, and which way."""

    current: tuple[str, ...]
    direction: str
    revisions: tuple[str, ...]


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


def writes_to_database(env: EnvironmentContext) -> bool:
    """Whether this run moves the database to a destination revision.

    `upgrade`, `downgrade` and `stamp` give Alembic a destination (`base`
    included, which reads back as None); the reading commands (`current`,
    `check`, `history`, `show`) give none, and `get_revision_argument` then has
    no destination to look up. No command or function name is involved.
    """
    try:
        env.get_revision_argument()
    except KeyError:
        return False
    return True


def revisions_between(script: ScriptDirectory, upper, lower, **options: Any) -> list:
    """The revisions Alembic walks from `lower` to `upper`; none when it cannot walk that way."""
    try:
        return list(script.iterate_revisions(upper, lower, **options))
    except (CommandError, RevisionError):
        return []


def plan_run(script: ScriptDirectory, current: tuple[str, ...], destination) -> RunPlan:
    """Which way the destination lies from `current`, and the revisions on the way, in order.

    `destination` is what `get_revision_argument` gives: a revision, a relative
    one (`-1`, `+2`), None for base, or a tuple (`heads`, a stamp's targets).
    """
    if isinstance(destination, tuple) and len(destination) == 1:
        (destination,) = destination
    ahead = revisions_between(script, destination, current)
    if ahead:
        return RunPlan(current, "upgrade", tuple(rev.revision for rev in reversed(ahead)))
    behind = []
    if not isinstance(destination, tuple):
        behind = revisions_between(script, current, destination, select_for_downgrade=True)
    direction = "downgrade" if behind else "none"
    return RunPlan(current, direction, tuple(rev.revision for rev in behind))


def unknown_revisions(script: ScriptDirectory, heads: tuple[str, ...]) -> list[str]:
    known = {rev.revision for rev in script.walk_revisions()}
    return [head for head in heads if head not in known]


def newer_database_message(unknown: list[str], applied: HistoryRow | None = None) -> str:
    """Which revision this release does not know, and which release to run instead.

    The migration history names the release that applied the revision, when
    that release kept one.
    """
    upgraded_by = "a newer release upgraded it"
    if applied is not None:
        upgraded_by = f"AniBridge {applied.app_version} applied it on {applied.applied_at[:10]}"
    return (
        f"the database is at revision {', '.join(unknown)}, which AniBridge {app_version()} "
        f"does not know: {upgraded_by}; run that release (or newer), or "
        "restore the backup taken before that upgrade (DATA_DIR/backups)"
    )


def refuse_unknown_revisions(script: ScriptDirectory, connection: Connection) -> tuple[str, ...]:
    """The database's current revisions, unless this release does not know one of them."""
    heads = current_heads(connection)
    unknown = unknown_revisions(script, heads)
    if unknown:
        applied = release_that_applied(connection, unknown[0])
        raise DatabaseNewerThanCodeError(newer_database_message(unknown, applied))
    return heads


def own_transaction(connection: Connection) -> AbstractContextManager:
    """Begin the transaction, unless the caller handed in a connection already inside one."""
    return nullcontext() if connection.in_transaction() else connection.begin()


@dataclass
class Attempt:
    """What one run has found so far: the database's versions, the backup taken, if any."""

    backup: Path | None = None
    current: tuple[str, ...] = ()


@contextmanager
def read_only_run(
    env: EnvironmentContext, connection: Connection, settings: Settings, **options: Any
) -> Iterator[None]:
    """Configure `env` for a run that only reads: no lock, nothing written, no waiting.

    A revision this release does not know is reported as the writing runs
    report it: Alembic's own commands could only say they cannot locate it.
    """
    env.configure(connection=connection, dont_mutate=True, **options)
    refuse_unknown_revisions(env.script, connection)
    yield


@contextmanager
def guarded_migrations(
    env: EnvironmentContext, connection: Connection, settings: Settings, **options: Any
) -> Iterator[None]:
    """Configure `env` on `connection` and wrap its run in the protections listed above."""
    timeout = settings.migration_lock_timeout
    attempt = Attempt()
    revision_log, heartbeat, history = (
        RevisionLog(),
        RevisionHeartbeat(),
        HistoryRecorder(env.script),
    )
    with sqlite_upgrade_lock(connection, timeout), failures_explained(env, connection, attempt):
        if connection.dialect.name == "sqlite":
            probe(connection)
        with own_transaction(connection):
            take_postgres_upgrade_lock(connection, timeout)
            require_migration_settings(connection)
            env.configure(
                connection=connection,
                on_version_apply=each_of(revision_log, history, heartbeat),
                **options,
            )
            attempt.current = refuse_unknown_revisions(env.script, connection)
            plan = plan_run(env.script, attempt.current, env.get_revision_argument())
            plan = prepare_run(env.script, connection, plan, settings, attempt)
            revision_log.restart()
            history.restart()
            set_aside = (
                views_and_triggers_set_aside(connection) if plan.revisions else nullcontext()
            )
            with set_aside, heartbeat.running_revisions(plan.revisions):
                yield
            if connection.dialect.name == "sqlite":
                require_foreign_keys_intact(connection)
        revision_log.report()
        if attempt.backup is not None:
            prune_backups(attempt.backup.parent, sqlite_file(connection), settings.backup_keep)


@contextmanager
def failures_explained(
    env: EnvironmentContext, connection: Connection, attempt: Attempt
) -> Iterator[None]:
    """Turn any failure of the run into one MigrationError line naming the backup, if any.

    The transaction has been rolled back by then, so the line says so. The
    traceback goes to the debug log (LOG_LEVEL=debug).
    """
    try:
        yield
    except MigrationError as exc:
        raise type(exc)(f"{exc}{backup_note(attempt)}") from None
    except CommandError as exc:
        refuse_overlapping_versions(env.script, attempt.current)
        raise MigrationError(f"{exc}{backup_note(attempt)}") from None
    except DBAPIError as exc:
        log.debug("The migration failed", exc_info=True)
        raise MigrationError(
            f"the migration failed and was rolled back: "
            f"{describe_database_error(exc, connection.engine.url)}{backup_note(attempt)}"
        ) from None
    except Exception as exc:
        log.debug("The migration failed", exc_info=True)
        raise MigrationError(
            f"the migration failed and was rolled back: {type(exc).__name__}: {exc}; fix the "
            f"revision (LOG_LEVEL=debug shows the traceback){backup_note(attempt)}"
        ) from None


def backup_note(attempt: Attempt) -> str:
    if attempt.backup is None:
        return ""
    return f"; the database as it was before this attempt is backed up in {attempt.backup}"


def refuse_overlapping_versions(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    """Explain an alembic_version with a row that is an ancestor of another row.

    Alembic refuses such a table with "overlaps with other requested revisions";
    `alembic stamp --purge` still works on it, so this runs only once Alembic failed.
    """
    for head in heads:
        older = {rev.revision for rev in script.walk_revisions("base", head)} - {head}
        stale = sorted(older.intersection(heads))
        if stale:
            rows = ", ".join(stale)
            raise MigrationError(
                f"alembic_version holds {len(heads)} rows ({', '.join(heads)}), but {rows} is "
                f"an ancestor of {head}; check that the schema is at {head} (`alembic check`), "
                f"then delete the stale row (DELETE FROM alembic_version WHERE version_num = "
                f"'{stale[0]}') and start again"
            )


def prepare_run(
    script: ScriptDirectory,
    connection: Connection,
    plan: RunPlan,
    settings: Settings,
    attempt: Attempt,
) -> RunPlan:
    """Adopt a legacy database, log the starting point, and back up if anything will change.

    An unversioned database is recognised before the backup: one that is refused
    leaves no backup behind. The backup is noted in `attempt`. Returns the plan
    left to run (without the baseline, when adoption stamped it).
    """
    backup = None
    if plan.direction == "upgrade" and has_unversioned_app_tables(connection, plan.current):
        started = time.perf_counter()
        known = recognise_unversioned_database(connection, script)
        backup = backup_if_sqlite(connection, None, settings)
        adopted = adopt_legacy_database(connection, script, known)
        record(connection, script, adopted, "adopt", time.perf_counter() - started)
        plan = RunPlan((adopted,), plan.direction, plan.revisions[1:])
    elif plan.current and plan.revisions:
        backup = backup_if_sqlite(connection, plan.current[0], settings)
    if not plan.revisions:
        log.info("Database is up to date at revision %s", ", ".join(plan.current) or "base")
    attempt.backup = backup
    return plan


def each_of(*callbacks: Callable[..., None]) -> Callable[..., None]:
    """One `on_version_apply` callback that calls each of `callbacks` in turn."""

    def on_version_apply(**kwargs: Any) -> None:
        for callback in callbacks:
            callback(**kwargs)

    return on_version_apply


def sqlite_file(connection: Connection) -> Path:
    return Path(connection.engine.url.database)


def backup_if_sqlite(
    connection: Connection, revision: str | None, settings: Settings
) -> Path | None:
    if connection.dialect.name != "sqlite" or settings.backup_keep == 0:
        return None
    return backup_database(sqlite_file(connection), settings.data_dir / "backups", revision)


def require_foreign_keys_intact(connection: Connection) -> None:
    """Refuse to commit an upgrade that left dangling references (checked with FKs off)."""
    broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise MigrationError(
            f"the upgrade would leave rows with broken foreign keys in {', '.join(tables)}; "
            "nothing was changed"
        )


class RevisionLog:
    """An `on_version_apply` callback that times each revision; `report` logs them.

    Called once the transaction has committed, so "Applied" is never logged
    for a revision a later failure rolled back.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, float]] = []
        self.restart()

    def restart(self) -> None:
        self.last = time.perf_counter()

    def __call__(self, *, step, **_kwargs) -> None:
        now = time.perf_counter()
        direction = "Applied" if step.is_upgrade else "Reverted"
        self.steps.append((direction, step.up_revision_id, now - self.last))
        self.last = now

    def report(self) -> None:
        for direction, revision, seconds in self.steps:
            log.info("%s revision %s in %.3f s", direction, revision, seconds)


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Upgrade the configured database in-process, through the same env.py as the CLI."""
    with connect_for_migrations(settings) as connection:
        config = alembic_config(connection, settings)
        config.attributes["skip_models"] = True
        command.upgrade(config, revision)


def database_revision(settings: Settings) -> tuple[str, ...]:
    with connect_for_migrations(settings, read_only=True) as connection:
        return current_heads(connection)


def known_database_revision(settings: Settings, script: ScriptDirectory) -> tuple[str, ...]:
    """The database's revisions; refused when this release does not know one of them."""
    with connect_for_migrations(settings, read_only=True) as connection:
        return refuse_unknown_revisions(script, connection)


def require_database_at_head(settings: Settings) -> None:
    """For DB_MIGRATE_ON_STARTUP=false: refuse to serve a database not at head."""
    script = script_directory()
    current = known_database_revision(settings, script)
    heads = set(script.get_heads())
    if set(current) != heads:
        raise MigrationError(
            f"the database is at revision {', '.join(current) or 'none'} but this release "
            f"needs {', '.join(sorted(heads))}; run `alembic upgrade head` (or start with "
            "DB_MIGRATE_ON_STARTUP=true)"
        )
