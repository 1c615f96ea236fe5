"""The FastAPI app and its start-up (`anibridge serve`); the command itself is app.cli."""

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import Engine

from app.api import mount_api
from app.config import Settings, get_settings
from app.data.leases import Heartbeat, fail_jobs_left_at_start
from app.data.session import session_scope
from app.engine import make_engine
from app.migration.at_head import at_vouched_head
from app.migration.connection import check_sqlite_file
from app.migration.guarded_run import database_revision, require_database_at_head, upgrade_database
from app.migration.locking import service_lock

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
    `anibridge restore` can tell that the database is in use. The jobs no
    running service holds are failed first, and a heartbeat keeps this one's
    claims for as long as it serves (app.data.leases).
    """
    with service_lock_if_sqlite(settings):
        revision = prepare_database(settings)
        engine = make_engine(settings.database_url)
        try:
            fail_jobs_left(settings, engine)
            with Heartbeat(engine, settings.instance_id):
                yield revision, engine
        finally:
            engine.dispose()


def fail_jobs_left(settings: Settings, engine: Engine) -> None:
    """Fail the jobs an earlier run of this service, or a stopped replica, left unfinished."""
    with session_scope(engine) as session:
        interrupted = fail_jobs_left_at_start(
            session, settings.instance_id, sole_service=settings.is_sqlite
        )
    if interrupted:
        log.info("Marked %d interrupted jobs as failed", interrupted)


def service_lock_if_sqlite(settings: Settings) -> AbstractContextManager:
    """The service lock beside a SQLite file, once the file passes the checks of what follows.

    The upgrade's checks (a read's with DB_MIGRATE_ON_STARTUP=false): a path no
    command can use is refused before a lock file is made beside it.
    """
    if not settings.is_sqlite:
        return nullcontext()
    database = Path(settings.database_url.database)
    check_sqlite_file(database, writable=settings.migrate_on_startup)
    return service_lock(database, settings.migration_lock_timeout)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up for servers that did not run `serve` (tests, `uvicorn app.main:app`)."""
    if getattr(app.state, "engine", None) is not None:
        yield
        return
    settings = get_settings()
    app.state.instance_id = settings.instance_id
    with running_service(settings) as (app.state.schema_revision, app.state.engine):
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
        service.state.instance_id = settings.instance_id
        uvicorn.run(
            service,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,
        )


if __name__ == "__main__":
    from app.cli import main

    sys.exit(main())
