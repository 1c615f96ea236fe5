"""Shared fixtures: databases on both engines, settings, and pytest-alembic wiring.

PostgreSQL tests run against the server at TEST_DATABASE_URL (default: the
local trust-auth server's `postgres` database, which every server has), each in
an empty database that this run created and drops at its end. Without a
server they are skipped, except under CI=true, where they fail.
"""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pytest_alembic.config import Config as PytestAlembicConfig
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from app.config import Settings, load_settings
from app.engine import make_engine
from app.migration.guarded_run import upgrade_database
from app.migration.revisions import alembic_config as make_alembic_config
from tests.revision_data import rows_by_revision
from tests.row_dump import RowDump, explain_difference

pytest_plugins = ("tests.containers",)

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPO_ROOT = Path(__file__).resolve().parents[1]


def postgres_server_url() -> URL:
    return make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)).set(
        drivername="postgresql+psycopg"
    )


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the test server's maintenance database."""
    engine = sa.create_engine(
        postgres_server_url(), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        message = f"PostgreSQL not reachable at {postgres_server_url()!r}: {exc.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


class PostgresDatabasePool:
    """Databases this run creates once, hands out empty, and drops at the end.

    CREATE DATABASE costs about half a second here; emptying a returned
    database (end its sessions, recreate the public schema) costs a tenth of that.
    """

    def __init__(self, admin: sa.Engine) -> None:
        self.admin = admin
        self.free: list[str] = []
        self.created: list[str] = []

    def take(self) -> URL:
        name = self.free.pop() if self.free else self._create()
        return postgres_server_url().set(database=name)

    def give_back(self, url: URL) -> None:
        self._terminate_sessions(url.database)
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("DROP SCHEMA public CASCADE"))
                connection.execute(sa.text("CREATE SCHEMA public"))
        finally:
            engine.dispose()
        self.free.append(url.database)

    def drop_all(self) -> None:
        for name in self.created:
            with self.admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def _create(self) -> str:
        name = f"anibridge_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return name

    def _terminate_sessions(self, name: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )


@pytest.fixture(scope="session")
def postgres_pool(postgres_admin: sa.Engine) -> Iterator[PostgresDatabasePool]:
    pool = PostgresDatabasePool(postgres_admin)
    yield pool
    pool.drop_all()


@pytest.fixture
def postgres_url(postgres_pool: PostgresDatabasePool) -> Iterator[URL]:
    """An empty PostgreSQL database for one test, created by this run."""
    url = postgres_pool.take()
    yield url
    postgres_pool.give_back(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    return URL.create("sqlite", database=str(tmp_path / "data" / "anibridge_jobs.db"))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> URL:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


def settings_for(url: URL, data_dir: Path, **environ: str) -> Settings:
    env = {"DATA_DIR": str(data_dir), "DATABASE_URL": url.render_as_string(False)}
    env.update(environ)
    data_dir.mkdir(parents=True, exist_ok=True)
    return load_settings(env)


@pytest.fixture
def migrated_engine(settings: Settings) -> Iterator[Engine]:
    """The service's engine on a database the upgrade brought to head."""
    upgrade_database(settings)
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: URL, tmp_path: Path) -> Settings:
    return settings_for(database_url, tmp_path / "data")


@pytest.fixture
def alembic_engine(settings: Settings) -> Iterator[sa.Engine]:
    """The database pytest-alembic migrates, on a plain engine as its docs set one up."""
    engine = sa.create_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_config(settings: Settings) -> PytestAlembicConfig:
    return PytestAlembicConfig(
        alembic_config=make_alembic_config(settings=settings),
        at_revision_data=rows_by_revision(),
    )


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Unequal row dumps are explained by counts and digests (see tests/row_dump.py)."""
    both_dicts = isinstance(left, dict) and isinstance(right, dict)
    if op == "==" and both_dicts and (isinstance(left, RowDump) or isinstance(right, RowDump)):
        return explain_difference(left, right)
    return None
