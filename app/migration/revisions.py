"""Questions about the revision graph and where a database stands in it.

Alembic's config and script directory for this project, the database's current
revisions, the plan of a run (which way, through which revisions), the one
check for a revision this release does not know, which every command that looks
at a database (the upgrade, the read-only commands, `anibridge status`, a
restore) asks the same way, and the one message for revision files that end in
several heads.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection

from app import app_version
from app.config import Settings
from app.migration.backup import list_backups, read_backup_name
from app.migration.errors import (
    DatabaseNewerThanCodeError,
    MigrationError,
    RevisionFileError,
    SeveralHeadsError,
)
from app.migration.journal import (
    HistoryRow,
    applied_revisions,
    read_history,
    release_that_applied,
)
from app.migration.unloadable_revisions import unloadable_revision_message

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


def script_directory(migrations_dir: Path | None = None) -> ScriptDirectory:
    """The project's script directory (or the one at `migrations_dir`), its revisions loaded."""
    if migrations_dir is None:
        return load_revisions(ScriptDirectory.from_config(alembic_config()))
    return load_revisions(ScriptDirectory(str(migrations_dir)))


def load_revisions(script: ScriptDirectory) -> ScriptDirectory:
    """`script` with every revision file loaded: the one place a file that cannot be is named.

    RevisionFileError (one line: the file, the error, its line) instead of the
    SyntaxError, NameError or ImportError a file left mid-edit raises.
    """
    try:
        script.get_heads()
    except CommandError:
        raise
    except Exception as exc:
        message = unloadable_revision_message(exc, Path(script.versions))
        if message is None:
            raise
        raise RevisionFileError(message) from None
    return script


def migration_context(connection: Connection, **options: Any) -> MigrationContext:
    """A MigrationContext for looking at the database, configured as the runs are.

    Alembic logs the DDL mode of every context it builds; without
    `transactional_ddl` a look at a SQLite database would log "non-transactional
    DDL" in the middle of a run that is one transaction.
    """
    return MigrationContext.configure(connection, opts={"transactional_ddl": True, **options})


def current_heads(connection: Connection) -> tuple[str, ...]:
    return migration_context(connection).get_current_heads()


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


def unknown_revisions(script: ScriptDirectory, revisions: Iterable[str]) -> list[str]:
    """Those of `revisions` this release has no file for, sorted: the one check for them."""
    known = {rev.revision for rev in script.walk_revisions()}
    return sorted(set(revisions) - known)


def several_heads_message(script: ScriptDirectory, heads: Sequence[str]) -> str:
    """What to do when the revision files end in more than one head: the one message for it.

    Two branches that each added a revision on the same parent give two heads
    once both are merged. Either the newer revision (its file name starts with
    the time it was written) is moved on top of the other, or a merge revision
    joins them; rebasing comes first, since pytest-alembic's experimental
    downgrade test cannot step across a merge (docs/migrations.md, "Two heads").
    """
    newest, other = sorted(heads, key=lambda head: Path(script.get_revision(head).path).name)[-2:]
    return (
        f"the revisions have {len(heads)} heads ({', '.join(sorted(heads))}), so there is no "
        f"single head to upgrade to: rebase the newer revision onto the other head (in "
        f'{Path(script.get_revision(newest).path).name} set down_revision = "{other}"), '
        f'or join them with `alembic merge heads -m "merge heads"`'
    )


def single_head(script: ScriptDirectory) -> str:
    """The one head of the revisions; SeveralHeadsError says what to do when there are more."""
    heads = script.get_heads()
    if len(heads) != 1:
        raise SeveralHeadsError(several_heads_message(script, heads))
    return heads[0]


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


def other_branch_message(
    script: ScriptDirectory,
    heads: tuple[str, ...],
    history: list[HistoryRow],
    settings: Settings | None,
) -> str | None:
    """The way back for a database a git branch switch left at a revision of the other branch.

    This version applied the revision, so it is no newer release: the files are
    on another branch. The history tells which revisions the database holds
    that this checkout lacks, the downgrade on the other branch that takes
    them off, and when the first of them was applied (the backup to restore is
    the newest one taken before). None when the history cannot tell.
    """
    applied = applied_revisions(history)
    lacking = set(unknown_revisions(script, applied))
    missing = [revision for revision in applied if revision in lacking]
    if not missing:
        return None
    first, unknown = missing[0], unknown_revisions(script, heads)
    downgrade, effect = downgrade_to_shared(heads, unknown, applied, missing)
    when = release_that_applied(history, first)
    message = (
        f"the database is at revision {', '.join(unknown)}, which this checkout does not have, "
        f"but this version (AniBridge {app_version()}) applied it on {when.applied_at[:10]}: "
        f"it comes from another git branch; check out the branch that has {first} and run "
        f"`{downgrade}` there ({effect})"
    )
    backup = backup_taken_before(settings, datetime.fromisoformat(when.applied_at))
    if backup is not None:
        message += (
            f", or restore the backup taken before {first} was applied: "
            f"`anibridge restore {backup}`"
        )
    return message


def downgrade_to_shared(
    heads: tuple[str, ...], unknown: list[str], applied: list[str], missing: list[str]
) -> tuple[str, str]:
    """The `alembic downgrade` that takes the missing revisions off, and what it does.

    Beside a head this checkout has, only the unknown head's branch steps down
    (`<head>@-N`; a plain target there would revert both branches or neither).
    """
    kept = [head for head in heads if head not in unknown]
    if kept:
        return (
            f"alembic downgrade {unknown[0]}@-{len(missing)}",
            f"it reverts {', '.join(missing)} and keeps {', '.join(kept)}",
        )
    shared = applied[: applied.index(missing[0])]
    target = shared[-1] if shared else "base"
    return f"alembic downgrade {target}", f"{target} is the last revision both branches share"


def backup_taken_before(settings: Settings | None, moment: datetime) -> Path | None:
    """The newest SQLite backup of the database taken before `moment`, if any."""
    if settings is None or not settings.is_sqlite:
        return None
    database, backups_dir = Path(settings.database_url.database), settings.backups_dir
    if not backups_dir.is_dir():
        return None
    earlier = [
        backup
        for backup in list_backups(backups_dir, database)
        if (created := read_backup_name(backup, database)[1]) is not None and created <= moment
    ]
    return earlier[-1] if earlier else None


def newer_database_refusal(
    script: ScriptDirectory,
    connection: Connection,
    heads: tuple[str, ...],
    settings: Settings | None = None,
) -> str | None:
    """The refusal for a database at `heads` when this release does not know one; else None.

    A revision this very version applied comes from another git branch, and gets
    the way back to this one; any other is a newer release's.
    """
    unknown = unknown_revisions(script, heads)
    if not unknown:
        return None
    history = read_history(connection)
    applied = release_that_applied(history, unknown[0])
    if applied is not None and applied.app_version == app_version():
        message = other_branch_message(script, heads, history, settings)
        if message is not None:
            return message
    return newer_database_message(unknown, applied)


def refuse_unknown_revisions(
    script: ScriptDirectory, connection: Connection, settings: Settings | None = None
) -> tuple[str, ...]:
    """The database's current revisions, unless this release does not know one of them.

    `settings` name the backups a refusal may point to.
    """
    heads = current_heads(connection)
    refusal = newer_database_refusal(script, connection, heads, settings)
    if refusal is not None:
        raise DatabaseNewerThanCodeError(refusal)
    return heads


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
