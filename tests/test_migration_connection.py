"""The migration connection and the upgrade's concurrency guards, each checked directly.

Each test here fails when its protection is taken out of app/migration: the write lock
at BEGIN, the password mask, the migration settings given to (and taken back from) a
connection built elsewhere, the upgrade lock before the first read, READ COMMITTED and a bounded
lock wait on PostgreSQL, "Applied" logged only after the commit.
"""

import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

import app.engine
import app.migration.connection
import app.migration.locking
from app.engine import driver_settings, make_engine
from app.migration.connection import connect_for_migrations
from app.migration.errors import DatabaseUnavailableError, MigrationError, describe_database_error
from app.migration.guarded_run import upgrade_database
from app.migration.locking import POSTGRES_LOCK_KEY
from app.migration.revisions import alembic_config, current_heads
from app.migration.sqlite_files import migration_lock_path
from tests.chain import BASELINE, HEAD, InjectedRevision, after, copy_project, plant_revisions
from tests.conftest import settings_for

PASSWORD = "s3cret-Pw"


def test_sqlite_migration_transaction_takes_the_write_lock_at_begin(
    sqlite_url: URL, tmp_path: Path
) -> None:
    settings = settings_for(sqlite_url, tmp_path / "data")
    other = sqlite3.connect(sqlite_url.database, timeout=0, isolation_level=None)
    try:
        with (
            connect_for_migrations(settings) as connection,
            connection.begin(),
            pytest.raises(sqlite3.OperationalError, match="locked"),
        ):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


def driver_error(message: str) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, Exception(message))


def test_a_password_in_a_driver_message_is_masked() -> None:
    url = make_url(f"postgresql+psycopg://anibridge:{PASSWORD}@db:5432/anibridge")
    error = driver_error(f'connection to "db" failed: password "{PASSWORD}" was rejected\nmore')

    line = describe_database_error(error, url)

    assert PASSWORD not in line and "***" in line and "\n" not in line


def test_connection_errors_never_repeat_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(f"postgresql+psycopg://anibridge:{PASSWORD}@db:5432/anibridge")

    class RefusingEngine:
        def connect(self) -> None:
            raise driver_error(f"could not connect with password={PASSWORD}")

        def dispose(self) -> None:
            pass

    monkeypatch.setattr(
        app.migration.connection, "make_engine", lambda *_args, **_kw: RefusingEngine()
    )
    settings = settings_for(url, tmp_path, DB_CONNECT_RETRIES="0")

    with pytest.raises(DatabaseUnavailableError) as refusal, connect_for_migrations(settings):
        pass

    assert PASSWORD not in str(refusal.value)
    assert "postgresql+psycopg://anibridge:***@db:5432/anibridge" in str(refusal.value)


def plain_sqlite_engine(url: URL, foreign_keys: bool) -> sa.Engine:
    """A `create_engine` as anyone writes it, with foreign keys switched as asked."""
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def _switch_foreign_keys(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")

    return engine


def failing_project(tmp_path: Path) -> Config:
    """This project with a last revision that creates a table, then fails."""
    project = copy_project(tmp_path / "project")
    body = (
        "    op.create_table('half_done', sa.Column('id', sa.Integer))\n"
        "    raise RuntimeError('this revision fails')"
    )
    plant_revisions(project, [InjectedRevision("badbadbadbad", "Failing", body)])
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    config.attributes["skip_logging_setup"] = True
    return config


@pytest.mark.parametrize("foreign_keys", [True, False])
def test_a_plain_sqlite_connection_is_adapted_for_the_run_and_given_back(
    sqlite_url: URL, foreign_keys: bool
) -> None:
    Path(sqlite_url.database).parent.mkdir(parents=True)
    engine = plain_sqlite_engine(sqlite_url, foreign_keys)
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            before = driver_settings(driver)
            command.upgrade(alembic_config(connection), "head")
            assert current_heads(connection) == (HEAD,)
            assert driver_settings(driver) == before
            assert before.foreign_keys is foreign_keys
    finally:
        engine.dispose()


def test_a_run_on_a_plain_sqlite_connection_is_all_or_nothing(
    sqlite_url: URL, tmp_path: Path
) -> None:
    Path(sqlite_url.database).parent.mkdir(parents=True)
    config = failing_project(tmp_path)
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            with pytest.raises(MigrationError, match="rolled back"):
                command.upgrade(config, "head")
            assert sa.inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def test_foreign_keys_on_inside_the_callers_transaction_are_one_line(sqlite_url: URL) -> None:
    Path(sqlite_url.database).parent.mkdir(parents=True)
    engine = plain_sqlite_engine(sqlite_url, foreign_keys=True)
    try:
        refused = pytest.raises(MigrationError, match="foreign keys on and is inside a transaction")
        with engine.connect() as connection, connection.begin(), refused:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()


def hold_sqlite_upgrade(database: Path, seconds: float, holding: threading.Event) -> None:
    """Act as another upgrade: the lock file, then SQLite's exclusive lock, for `seconds`."""
    lock = os.open(migration_lock_path(database), os.O_RDWR | os.O_CREAT, 0o600)
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection.execute("BEGIN EXCLUSIVE")
        holding.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
    finally:
        connection.close()
        os.close(lock)


def test_a_second_sqlite_upgrade_waits_for_the_lock_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder keeps SQLite locked longer than the busy timeout: only the lock file waits."""
    monkeypatch.setattr(app.engine, "SQLITE_BUSY_TIMEOUT_S", 1)
    database = tmp_path / "anibridge_jobs.db"
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    upgrade_database(settings, BASELINE)
    holding = threading.Event()
    holder = threading.Thread(target=hold_sqlite_upgrade, args=(database, 2.5, holding))
    holder.start()
    try:
        assert holding.wait(10)
        upgrade_database(settings)
    finally:
        holder.join()

    with connect_for_migrations(settings, read_only=True) as connection:
        assert current_heads(connection) == (HEAD,)


class VersionAtLog(logging.Handler):
    """Reads the database's version, from another connection, when "Applied" is logged."""

    def __init__(self, url: URL) -> None:
        super().__init__()
        self.engine = make_engine(url)
        self.seen: list[tuple[str, ...]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Applied revision"):
            with self.engine.connect() as connection:
                self.seen.append(current_heads(connection))


def test_applied_is_logged_only_after_the_commit(settings, caplog) -> None:
    upgrade_database(settings, BASELINE)
    watcher = VersionAtLog(settings.database_url)
    logger = logging.getLogger("app.migration.guarded_run")
    logger.addHandler(watcher)
    try:
        with caplog.at_level(logging.INFO, logger="app.migration.guarded_run"):
            upgrade_database(settings)
    finally:
        logger.removeHandler(watcher)
        watcher.engine.dispose()

    assert watcher.seen == [(HEAD,)] * len(after(BASELINE))


@pytest.fixture
def database_default_isolation(postgres_admin: sa.Engine, postgres_url: URL):
    """Set the test database's default isolation level for new sessions; reset it after."""

    def set_default(level: str) -> None:
        with postgres_admin.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{postgres_url.database}" '
                f"SET default_transaction_isolation = '{level}'"
            )

    yield set_default
    with postgres_admin.connect() as connection:
        connection.exec_driver_sql(
            f'ALTER DATABASE "{postgres_url.database}" RESET default_transaction_isolation'
        )


def test_postgres_upgrader_that_waited_sees_the_committed_upgrade(
    postgres_url: URL, tmp_path: Path, database_default_isolation
) -> None:
    """Under a REPEATABLE READ default, a waiter's snapshot would predate the other's commit."""
    database_default_isolation("repeatable read")
    settings = settings_for(postgres_url, tmp_path)
    engine = make_engine(postgres_url, for_migrations=True)
    outcome: list[BaseException | None] = []

    def second_upgrade() -> None:
        try:
            upgrade_database(settings)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    with engine.connect() as first, first.begin():
        first.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
        command.upgrade(alembic_config(first, settings), "head")
        waiter = threading.Thread(target=second_upgrade)
        waiter.start()
        time.sleep(1.5)
    waiter.join(60)
    engine.dispose()

    assert outcome == [None]
    with connect_for_migrations(settings, read_only=True) as connection:
        assert current_heads(connection) == (HEAD,)


def test_postgres_ddl_waits_for_table_locks_only_so_long(postgres_url: URL, tmp_path: Path) -> None:
    """A service's open transaction holds a table: the upgrade gives up with one line."""
    settings = settings_for(
        postgres_url,
        tmp_path,
        DB_MIGRATION_TABLE_LOCK_TIMEOUT="1",
        DB_MIGRATION_TABLE_LOCK_RETRIES="0",
    )
    upgrade_database(settings, BASELINE)
    service = make_engine(postgres_url)
    release = threading.Event()

    def hold_table() -> None:
        with service.connect() as connection, connection.begin():
            connection.exec_driver_sql("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
            release.wait(10)

    holder = threading.Thread(target=hold_table)
    holder.start()
    time.sleep(0.5)
    try:
        with pytest.raises(MigrationError) as refusal:
            upgrade_database(settings)
    finally:
        release.set()
        holder.join()
        service.dispose()

    assert "lock timeout" in str(refusal.value) and "stop the service" in str(refusal.value)
    with connect_for_migrations(settings, read_only=True) as connection:
        assert current_heads(connection) == (BASELINE,)


def test_no_line_calls_a_sqlite_run_non_transactional(tmp_path: Path, caplog) -> None:
    """Adoption, the upgrade, `alembic current` and `anibridge status` each look at the file."""
    from app.data.models import metadata
    from app.migration.status import database_status
    from tests.legacy_data import release_file

    database = tmp_path / "anibridge_jobs.db"
    shutil.copyfile(release_file("v1.16.1.db"), database)
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    caplog.set_level(logging.INFO)

    upgrade_database(settings)
    command.current(alembic_config(settings=settings))
    database_status(settings, metadata)

    said = [record.getMessage() for record in caplog.records]
    assert "Will assume transactional DDL." in said
    assert not [line for line in said if "non-transactional" in line]


def test_a_handed_in_engine_needs_no_database_url_and_backs_up_beside_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.legacy_data import release_file

    monkeypatch.setenv("DATABASE_URL", "not a url")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "elsewhere"))
    database = tmp_path / "files" / "anibridge_jobs.db"
    database.parent.mkdir()
    shutil.copyfile(release_file("v2.1.0.db"), database)
    engine = sa.create_engine(URL.create("sqlite", database=str(database)))
    try:
        command.upgrade(alembic_config(engine), "head")
        with engine.connect() as connection:
            assert current_heads(connection) == (HEAD,)
    finally:
        engine.dispose()

    assert [path.name for path in (database.parent / "backups").iterdir()][0].startswith(
        "anibridge_jobs-unversioned-"
    )
    assert not (tmp_path / "elsewhere").exists()
