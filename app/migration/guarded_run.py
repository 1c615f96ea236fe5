"""The safe upgrade: the protections env.py calls around every online run that writes.

Runs that only read (`alembic current`, `check`, `history`) take none of this:
`writes_to_database` tells them apart, and env.py runs them on a read-only
connection with `dont_mutate`. For the others env.py reads as Alembic's own
template (configure, begin a transaction, run), with each protection a call:

1. `protections`, around it all: the upgrade lock for the whole run
   (concurrent starters queue, then find nothing to do; on PostgreSQL with the
   run's bounds on every statement, see app.migration.locking), any failure as
   one line that says what was rolled back and names the backup, and on SQLite
   the migration settings for the run's connection, whoever built it
   (app.migration.connection.migration_settings: one transaction with `BEGIN
   IMMEDIATE`, foreign keys off, its own settings back afterwards);
2. Alembic's `begin_transaction`: everything below is one transaction, on
   SQLite too (a caller's open transaction is joined as it is, and noted for
   the revisions' `outside_transaction()`, app.migration.patterns), except what
   a revision runs in Alembic's `autocommit_block` (docs/migrations.md);
3. `refuse_newer_database`: a revision this code does not know stops the run;
4. `adopt_and_back_up`: adoption of an unversioned database when the run goes
   up and, on SQLite, a backup before the first change (a downgrade, which may
   drop tables and their rows, is backed up too);
5. `drop_invalid_indexes`: on PostgreSQL, before revisions run, the indexes a
   failed concurrent build left invalid, so the revision builds them again
   (app.migration.invalid_indexes);
6. `revisions_running`: on SQLite the user's views and triggers set aside while
   revisions run (a batch-mode table rebuild fails on them otherwise; see
   app.migration.views_and_triggers), and a heartbeat in the log;
7. `check_foreign_keys`: on SQLite, no dangling reference is committed;
8. after the commit, `protections` logs the revisions as applied and prunes
   old backups.

The questions about the revision graph (the plan, unknown revisions) live in
app.migration.revisions. Alembic calls one `StepClock` after each step; it
times the step for the log, the history rows and the heartbeat, and for any
further listeners the caller hands in as `config.attributes["step_listeners"]`
(`anibridge plan` watches a rehearsal that way: app.migration.rehearsal).

`upgrade_database` is the in-process entry point used at start-up and by the
`anibridge migrate` command; it hands its connection to Alembic so both paths
run the same env.py.
"""

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError

from app.config import Settings
from app.migration.adoption.adopt import (
    adopt_legacy_database,
    has_unversioned_app_tables,
    recognise_unversioned_database,
)
from app.migration.backup import backup_database, prune_backups
from app.migration.connection import connect_for_migrations, migration_settings, probe
from app.migration.errors import (
    MigrationError,
    SeveralHeadsError,
    TableLockTimeoutError,
    describe_database_error,
    is_lock_timeout,
    statement_summary,
)
from app.migration.invalid_indexes import drop_invalid_indexes
from app.migration.journal import HistoryRecorder
from app.migration.locking import postgres_upgrade_lock, sqlite_upgrade_lock
from app.migration.patterns import caller_transaction_noted, refuse_autocommit_blocks
from app.migration.progress import Adoption, RevisionHeartbeat, StepClock
from app.migration.revisions import (
    RunPlan,
    alembic_config,
    current_heads,
    plan_run,
    refuse_overlapping_versions,
    refuse_unknown_revisions,
    script_directory,
    several_heads_message,
    single_head,
)
from app.migration.views_and_triggers import views_and_triggers_set_aside

log = logging.getLogger(__name__)


def writes_to_database(env: EnvironmentContext) -> bool:
    """Whether this run moves the database to a destination revision.

    `upgrade`, `downgrade` and `stamp` give Alembic a destination (`base`
    included, which reads back as None); the reading commands (`current`,
    `check`, `history`, `show`) give none, and `get_revision_argument` then has
    no destination to look up. No command or function name is involved. A
    destination Alembic cannot resolve while the revision files have several
    heads (`head` is then ambiguous) is refused in the words every command uses
    for several heads (`several_heads_message`); `heads` or a revision still work.
    """
    try:
        env.get_revision_argument()
    except KeyError:
        return False
    except CommandError:
        heads = env.script.get_heads()
        if len(heads) > 1:
            raise SeveralHeadsError(several_heads_message(env.script, heads)) from None
        raise
    return True


@dataclass
class Attempt:
    """What one run has found so far: the database's versions, the backup taken, if any."""

    backup: Path | None = None
    current: tuple[str, ...] = ()
    committed_early: bool = False
    """An autocommit block of a revision committed the run's transaction before its end."""

    def note_commit(self, _connection: Connection) -> None:
        self.committed_early = True


class GuardedRun:
    """The protections of one writing run, each a step env.py calls in the order listed above."""

    def __init__(self, env: EnvironmentContext, connection: Connection, settings: Settings):
        self.env, self.connection, self.settings = env, connection, settings
        self.in_caller_transaction = connection.in_transaction()
        """The one place this is decided: before Alembic begins the run's transaction."""
        self.attempt = Attempt()
        self.plan = RunPlan((), "none", ())
        self.revision_log = RevisionLog()
        self.clock = StepClock()
        self.heartbeat = RevisionHeartbeat(self.clock)
        self.clock.listeners = (
            self.revision_log,
            HistoryRecorder(env.script),
            self.heartbeat,
            *env.config.attributes.get("step_listeners", ()),
        )

    def refuse_newer_database(self) -> None:
        self.attempt.current = refuse_unknown_revisions(
            self.env.script, self.connection, self.settings
        )

    def adopt_and_back_up(self) -> None:
        """Plan the run; adopt an unversioned database and back up before anything changes."""
        plan = plan_run(self.env.script, self.attempt.current, self.env.get_revision_argument())
        self.plan = prepare_run(
            self.env.script, self.connection, plan, self.settings, self.attempt, self.clock
        )

    def drop_invalid_indexes(self) -> None:
        """PostgreSQL: before revisions run, drop what failed concurrent index builds left."""
        if self.plan.revisions and self.connection.dialect.name == "postgresql":
            drop_invalid_indexes(self.env.get_context())

    @contextmanager
    def revisions_running(self) -> Iterator[None]:
        """Views and triggers set aside (SQLite), a heartbeat, and early commits noted.

        Inside a caller's transaction a revision's raw `autocommit_block()` is
        refused with the fix named (app.migration.patterns).
        """
        if self.in_caller_transaction:
            refuse_autocommit_blocks(self.env.get_context())
        set_aside = nullcontext()
        if self.plan.revisions:
            set_aside = views_and_triggers_set_aside(self.connection)
        with (
            set_aside,
            self.heartbeat.running_revisions(self.plan.revisions),
            commits_noted(self.connection, self.attempt),
        ):
            yield

    def check_foreign_keys(self) -> None:
        if self.connection.dialect.name == "sqlite":
            require_foreign_keys_intact(self.connection)

    def after_commit(self) -> None:
        """Log the revisions as applied and prune old backups, once nothing can roll back."""
        self.revision_log.report()
        if self.attempt.backup is not None:
            prune_backups(
                self.attempt.backup.parent, sqlite_file(self.connection), self.settings.backup_keep
            )


@contextmanager
def protections(
    env: EnvironmentContext, connection: Connection, settings: Settings
) -> Iterator[GuardedRun]:
    """Around a writing run: the upgrade lock, one-line failures, SQLite's migration settings.

    The block configures Alembic and runs the revisions in Alembic's transaction
    (env.py); once that has committed, the run is logged and old backups pruned.
    """
    run = GuardedRun(env, connection, settings)
    with (
        failures_explained(env, connection, run.attempt),
        caller_transaction_noted(env.config, run.in_caller_transaction),
        upgrade_lock(connection, settings),
    ):
        if connection.dialect.name == "sqlite":
            probe(connection)
        with migration_settings(connection):
            yield run
        run.after_commit()


@contextmanager
def commits_noted(connection: Connection, attempt: Attempt) -> Iterator[None]:
    """Note in `attempt` each commit while revisions run: an autocommit block's."""
    event.listen(connection, "commit", attempt.note_commit)
    try:
        yield
    finally:
        event.remove(connection, "commit", attempt.note_commit)


@contextmanager
def failures_explained(
    env: EnvironmentContext, connection: Connection, attempt: Attempt
) -> Iterator[None]:
    """Turn any failure of the run into one MigrationError line naming the backup, if any.

    The transaction has been rolled back by then, so the line says so, and says
    what stays when an autocommit block committed before the failure. A
    lock_timeout is a TableLockTimeoutError, which app.migration.lock_retry may
    try again. The traceback goes to the debug log (LOG_LEVEL=debug).
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
        message = (
            f"the migration failed{what_was_undone(attempt)}: "
            f"{describe_database_error(exc, connection.engine.url)}{backup_note(attempt)}"
        )
        if is_lock_timeout(exc):
            raise TableLockTimeoutError(message, statement_summary(exc.statement)) from None
        raise MigrationError(message) from None
    except Exception as exc:
        log.debug("The migration failed", exc_info=True)
        raise MigrationError(
            f"the migration failed{what_was_undone(attempt)}: {type(exc).__name__}: {exc}; fix "
            f"the revision (LOG_LEVEL=debug shows the traceback){backup_note(attempt)}"
        ) from None


def what_was_undone(attempt: Attempt) -> str:
    if attempt.committed_early:
        return (
            " after an autocommit block had committed part of it (that part stays; the rest "
            "was rolled back, and the next run starts from the revision it left)"
        )
    return " and was rolled back"


def backup_note(attempt: Attempt) -> str:
    if attempt.backup is None:
        return ""
    return f"; the database as it was before this attempt is backed up in {attempt.backup}"


def prepare_run(
    script: ScriptDirectory,
    connection: Connection,
    plan: RunPlan,
    settings: Settings,
    attempt: Attempt,
    clock: StepClock,
) -> RunPlan:
    """Adopt a legacy database, log the starting point, and back up if anything will change.

    An unversioned database is recognised before the backup: one that is refused
    leaves no backup behind. The backup is noted in `attempt`; the run's clock
    times the adoption for its history row. Returns the plan left to run
    (without the baseline, when adoption stamped it).
    """
    backup = None
    if plan.direction == "upgrade" and has_unversioned_app_tables(connection, plan.current):
        clock.restart()
        known = recognise_unversioned_database(connection, script)
        backup = backup_if_sqlite(connection, None, settings)
        adopted = adopt_legacy_database(connection, script, known)
        schema = known.released.name if known.released else None
        clock(adoption=Adoption(connection, adopted, known.description, schema))
        plan = RunPlan((adopted,), plan.direction, plan.revisions[1:])
    elif backs_up(plan.current, plan.revisions):
        backup = backup_if_sqlite(connection, plan.current[0], settings)
    if not plan.revisions:
        log.info("Database is up to date at revision %s", ", ".join(plan.current) or "base")
    attempt.backup = backup
    return plan


def backs_up(current: tuple[str, ...], revisions: tuple[str, ...]) -> bool:
    """Whether a versioned database is backed up first (an adopted one always is).

    An empty database has nothing to lose; a run that changes nothing needs no copy.
    """
    return bool(current and revisions)


def upgrade_lock(connection: Connection, settings: Settings) -> AbstractContextManager:
    """The upgrade lock of the run's database; none for SQLite in memory, which no one else sees."""
    timeout_s = settings.migration_lock_timeout
    if connection.dialect.name == "postgresql":
        return postgres_upgrade_lock(connection, timeout_s, statement_bounds(settings))
    if sqlite_file(connection) is None:
        return nullcontext()
    return sqlite_upgrade_lock(connection, timeout_s)


def statement_bounds(settings: Settings) -> dict[str, str]:
    """PostgreSQL's bounds on each statement of the run, in milliseconds (0: none)."""
    return {
        "lock_timeout": str(settings.table_lock_timeout * 1000),
        "statement_timeout": str(settings.statement_timeout * 1000),
    }


def sqlite_file(connection: Connection) -> Path | None:
    """The SQLite file the connection is on; None on PostgreSQL or for a database in memory."""
    database = connection.engine.url.database
    if connection.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return Path(database)


def backup_if_sqlite(
    connection: Connection, revision: str | None, settings: Settings
) -> Path | None:
    database = sqlite_file(connection)
    if database is None or settings.backup_keep == 0:
        return None
    return backup_database(database, settings.backups_dir, revision)


def require_foreign_keys_intact(connection: Connection) -> None:
    """Refuse to commit an upgrade that left dangling references (checked with FKs off)."""
    tables = tables_with_broken_foreign_keys(connection)
    if tables:
        raise MigrationError(
            f"the upgrade would leave rows with broken foreign keys in {', '.join(tables)}; "
            "nothing was changed"
        )


def tables_with_broken_foreign_keys(connection: Connection) -> list[str]:
    """The tables `PRAGMA foreign_key_check` finds rows in (SQLite), sorted."""
    broken = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    return sorted({row[0] for row in broken})


class RevisionLog:
    """A listener of the run's `StepClock` collecting each step; `report` logs them.

    Reported once the transaction has committed, so "Applied" is never logged
    for a revision a later failure rolled back.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, str, float]] = []

    def __call__(self, *, seconds: float, step=None, **_step) -> None:
        if step is None:
            return
        direction = "Applied" if step.is_upgrade else "Reverted"
        self.steps.append((direction, step.up_revision_id, seconds))

    def report(self) -> None:
        for direction, revision, seconds in self.steps:
            log.info("%s revision %s in %.3f s", direction, revision, seconds)


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Upgrade the configured database in-process, through the same env.py as the CLI.

    The revision files are loaded before the database is opened, so a file that
    cannot be is named with nothing created.
    """
    script_directory()
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
        return refuse_unknown_revisions(script, connection, settings)


def require_database_at_head(settings: Settings) -> tuple[str, ...]:
    """For DB_MIGRATE_ON_STARTUP=false: the database's revisions, refused when not at head."""
    script = script_directory()
    head = single_head(script)
    current = known_database_revision(settings, script)
    if current != (head,):
        raise MigrationError(
            f"the database is at revision {', '.join(current) or 'none'} but this release "
            f"needs {head}; run `alembic upgrade head` (or start with "
            "DB_MIGRATE_ON_STARTUP=true)"
        )
    return current
