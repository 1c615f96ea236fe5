"""The FastAPI app, its start-up, and the `anibridge` command."""

import argparse
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from app import app_version, migrate
from app.api import mount_api
from app.config import ConfigError, Settings, get_settings, load_settings
from app.data import crud
from app.data.session import session_scope
from app.engine import make_engine
from app.logs import configure_logging
from app.migration.at_head import at_vouched_head
from app.migration.guarded_run import database_revision, require_database_at_head, upgrade_database
from app.migration.locking import service_lock
from app.migration.restore import restore_backup
from app.migration.revisions import script_directory

log = logging.getLogger("app")


def prepare_database(settings: Settings) -> str | None:
    """Make the database ready to serve and return its schema revision.

    With DB_MIGRATE_ON_STARTUP (the default) this runs the same safe upgrade
    as `alembic upgrade head`; without it, a database not at head is refused.
    On PostgreSQL a database already at the head the manifest vouches for is
    not upgraded: this process has imported the driver anyway, so the check
    costs one read (the container's start-up step leaves it to the service).
    """
    if not settings.migrate_on_startup:
        revision = require_database_at_head(settings)
    else:
        revision = revision_after_upgrade(settings)
    return ", ".join(revision) or None


def revision_after_upgrade(settings: Settings) -> tuple[str, ...]:
    """Upgrade, unless PostgreSQL is already at the head the manifest vouches for.

    The revision is read again only when the upgrade ran.
    """
    if not settings.is_sqlite:
        current = database_revision(settings)
        if at_vouched_head(current):
            return current
    upgrade_database(settings)
    return database_revision(settings)


@contextmanager
def running_service(settings: Settings) -> Iterator[tuple[str | None, Engine]]:
    """What the service holds while it serves: the database ready, its engine, its lock.

    On SQLite the service lock is held shared for the whole time, so
    `anibridge restore` can tell that the database is in use.
    """
    with service_lock_if_sqlite(settings):
        revision = prepare_database(settings)
        engine = make_engine(settings.database_url)
        try:
            with session_scope(engine) as session:
                interrupted = crud.fail_interrupted_jobs(session)
            if interrupted:
                log.info("Marked %d interrupted jobs as failed", interrupted)
            yield revision, engine
        finally:
            engine.dispose()


def service_lock_if_sqlite(settings: Settings) -> AbstractContextManager:
    if not settings.is_sqlite:
        return nullcontext()
    return service_lock(Path(settings.database_url.database), settings.migration_lock_timeout)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up for servers that did not run `serve` (tests, `uvicorn app.main:app`)."""
    if getattr(app.state, "engine", None) is not None:
        yield
        return
    with running_service(get_settings()) as (app.state.schema_revision, app.state.engine):
        yield


def create_app() -> FastAPI:
    app = FastAPI(title="AniBridge", lifespan=lifespan)
    mount_api(app)
    return app


app = create_app()


def serve(settings: Settings) -> None:
    """Prepare the database first, so a failure is one line and not a server's traceback."""
    import uvicorn

    with running_service(settings) as (revision, engine):
        service = create_app()
        service.state.schema_revision, service.state.engine = revision, engine
        uvicorn.run(
            service,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anibridge",
        description="AniBridge: migrate the database if needed, then serve (the default), "
        "or run one of the commands below. Settings come from the environment (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {app_version()}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="migrate the database if needed, then serve (default)")
    commands.add_parser("migrate", help="upgrade the database to head and exit")
    status = commands.add_parser(
        "status", help="show where the database stands (read-only; never waits for an upgrade)"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    plan = commands.add_parser(
        "plan",
        help="rehearse the upgrade and show what it would do to this database, changing "
        "nothing (exit 0: nothing to do, 2: it would change something, 1: refused or failed)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (docs/plan.md)")
    restore = commands.add_parser("restore", help="replace the SQLite database with a backup")
    restore.add_argument("backup", type=Path, help="a file from DATA_DIR/backups")
    return parser.parse_args(argv)


def show_status(as_json: bool) -> None:
    """`anibridge status`: settings read without creating DATA_DIR, the database only read."""
    from app.data.models import metadata
    from app.migration.status import database_status, render

    status = database_status(load_settings(), metadata)
    print(status.as_json() if as_json else render(status))


def show_plan(as_json: bool) -> int:
    """`anibridge plan`: settings read without creating DATA_DIR; the upgrade rehearsed."""
    from app.migration.plan import plan_upgrade, render

    settings = load_settings()
    configure_logging("debug" if settings.log_level == "debug" else "warning")
    plan = plan_upgrade(settings, notice=lambda line: print(line, file=sys.stderr))
    print(plan.as_json() if as_json else render(plan))
    return plan.exit_code


def run(args: argparse.Namespace) -> int | None:
    if args.command == "status":
        show_status(args.json)
        return None
    if args.command == "plan":
        return show_plan(args.json)
    settings = get_settings()
    configure_logging(settings.log_level)
    if args.command == "restore":
        if not settings.is_sqlite:
            raise ConfigError("DATABASE_URL: restore works on the SQLite database only")
        database = Path(settings.database_url.database)
        aside = restore_backup(args.backup, database, script_directory())
        kept = f"; the replaced database is kept as {aside}" if aside else ""
        print(f"restored {args.backup}{kept}")
    else:
        serve(settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "migrate":
        return migrate.main()
    return migrate.exit_code_of(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
