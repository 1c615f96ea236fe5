"""The one place that builds engines, for the service and for migrations.

Both dialects go through `make_engine`. The migration flavour differs on SQLite:

* Python's sqlite3 module opens transactions only before DML, so DDL would
  autocommit statement by statement. The driver is put in autocommit mode and
  SQLAlchemy's `begin` emits `BEGIN IMMEDIATE` itself, so a whole upgrade is
  one transaction and takes SQLite's write lock at once.
* Foreign keys are off: a batch-mode table rebuild drops and recreates the
  table, which with foreign keys on would cascade-delete child rows. The
  upgrade checks `PRAGMA foreign_key_check` before it commits instead.
"""

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

SQLITE_BUSY_TIMEOUT_S = 30
POSTGRES_CONNECT_TIMEOUT_S = 5


def make_engine(url: URL, *, for_migrations: bool = False) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _make_sqlite_engine(url, for_migrations=for_migrations)
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
        poolclass=NullPool if for_migrations else None,
    )


def _make_sqlite_engine(url: URL, *, for_migrations: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=NullPool if for_migrations else None,
    )
    foreign_keys = "OFF" if for_migrations else "ON"

    @event.listens_for(engine, "connect")
    def _configure_connection(dbapi_connection, _record) -> None:
        if for_migrations:
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA foreign_keys = {foreign_keys}")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    if for_migrations:

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
