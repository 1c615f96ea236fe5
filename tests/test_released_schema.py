"""The baseline revision reproduces the schema the last release shipped; head, the models.

The released schema is tests/data/legacy_sql/multi_site.sql, the DDL that release's
`create_all` produced on SQLite (app/migration/adoption/releases/ holds the schemas of
the databases the real releases made, tests/data/releases/ the databases).
Databases made by it are adopted (stamped at the baseline) only if the
baseline creates exactly that schema, so the comparison here covers exact
SQLite column types and index names.
"""

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import URL

from app.config import Settings
from app.data.models import metadata
from app.engine import make_engine
from app.migration.adoption.adopt import (
    MULTI_SITE,
    RELEASED_SCHEMAS,
    SINGLE_SITE,
    ReleasedSchema,
    released_sqlite_schema,
    sqlite_definitions,
)
from app.migration.adoption.schema_shape import (
    IGNORED_TABLES,
    TableShape,
    describe_schema,
    diff_schemas,
)
from app.migration.revisions import alembic_config
from tests.chain import BASELINE
from tests.conftest import settings_for
from tests.legacy_data import release_file

REPO_ROOT = Path(__file__).resolve().parents[1]
LEGACY_DIR = REPO_ROOT / "tests" / "data" / "legacy_sql"
SPEC_LEGACY_DIR = REPO_ROOT.parent / "shared" / "spec" / "legacy"
RELEASE_SCHEMA_DIR = REPO_ROOT / "app" / "migration" / "adoption" / "releases"

ColumnInfo = tuple[str, str, bool, int]


def sqlite_columns(path: Path) -> dict[str, list[ColumnInfo]]:
    """Per table: (name, declared type, NOT NULL, primary-key position) as SQLite reports them."""
    with sqlite3.connect(path) as connection:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if row[0] not in IGNORED_TABLES
        ]
        return {
            table: [
                (name, declared, bool(notnull), pk)
                for _cid, name, declared, notnull, _default, pk in connection.execute(
                    f"PRAGMA table_info({table})"
                )
            ]
            for table in sorted(tables)
        }


def sqlite_indexes(path: Path) -> set[tuple[str, str, str]]:
    """(index name, table, CREATE INDEX statement) for every named index."""
    with sqlite3.connect(path) as connection:
        return set(
            connection.execute(
                "SELECT name, tbl_name, sql FROM sqlite_master "
                "WHERE type = 'index' AND sql IS NOT NULL"
            )
        ) - set(
            connection.execute(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE tbl_name IN (?, ?)",
                tuple(IGNORED_TABLES),
            )
        )


def reflected_shape(url: URL) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return describe_schema(connection)
    finally:
        engine.dispose()


def released_sqlite_database(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        connection.executescript((LEGACY_DIR / "multi_site.sql").read_text())
    return path


def create_all(url: URL) -> None:
    engine = make_engine(url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


def sqlite_file_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path))


@pytest.fixture
def sqlite_settings(sqlite_url: URL, tmp_path: Path) -> Settings:
    return settings_for(sqlite_url, tmp_path / "data")


@pytest.fixture
def released_database(tmp_path: Path) -> Path:
    return released_sqlite_database(tmp_path / "released" / "multi_site.db")


@pytest.fixture
def twin_database_url(
    database_url: URL, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[URL]:
    """A second fresh, empty database on the same engine as `database_url`."""
    if database_url.get_backend_name() == "sqlite":
        (tmp_path / "twin").mkdir()
        yield sqlite_file_url(tmp_path / "twin" / "create_all.db")
        return
    admin: sa.Engine = request.getfixturevalue("postgres_admin")
    name = f"anibridge_twin_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield database_url.set(database=name)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_released_schema_uses_only_known_types_and_conventional_index_names(
    released_database: Path,
) -> None:
    """Guards the comparisons above: they are only as good as what the SQL declares."""
    declared = {
        column[1] for columns in sqlite_columns(released_database).values() for column in columns
    }
    assert declared == {"VARCHAR", "INTEGER", "FLOAT", "BOOLEAN", "DATETIME", "JSON"}
    indexes = sqlite_indexes(released_database)
    assert len(indexes) == 11
    for name, table, sql in indexes:
        column = sql.rsplit("(", 1)[1].rstrip(")")
        assert name == f"ix_{table}_{column}"


def test_baseline_revision_creates_the_released_schema(
    sqlite_settings: Settings, released_database: Path
) -> None:
    command.upgrade(alembic_config(settings=sqlite_settings), BASELINE)

    migrated = Path(sqlite_settings.database_url.database)
    expected = reflected_shape(sqlite_file_url(released_database))
    assert diff_schemas(expected, reflected_shape(sqlite_settings.database_url)) == []
    assert sqlite_columns(migrated) == sqlite_columns(released_database)
    assert sqlite_indexes(migrated) == sqlite_indexes(released_database)


def exact_schema(url: URL) -> dict[str, dict]:
    """Per table: column types as this engine spells them, index and primary key names."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            return {
                table: {
                    "columns": {
                        column["name"]: column["type"].compile(dialect=connection.dialect)
                        for column in inspector.get_columns(table)
                    },
                    "indexes": sorted(index["name"] for index in inspector.get_indexes(table)),
                    "primary_key": inspector.get_pk_constraint(table)["name"],
                }
                for table in sorted(set(inspector.get_table_names()) - IGNORED_TABLES)
            }
    finally:
        engine.dispose()


def columns_by_name(shape: dict[str, TableShape]) -> dict[str, TableShape]:
    return {
        name: replace(table, columns=tuple(sorted(table.columns, key=lambda column: column.name)))
        for name, table in shape.items()
    }


def test_head_matches_create_all_on_the_same_engine(
    settings: Settings, twin_database_url: URL
) -> None:
    """Column order aside: a revision adds a column last, a model may declare it anywhere."""
    command.upgrade(alembic_config(settings=settings), "head")
    create_all(twin_database_url)

    expected = columns_by_name(reflected_shape(twin_database_url))
    assert diff_schemas(expected, columns_by_name(reflected_shape(settings.database_url))) == []
    assert exact_schema(settings.database_url) == exact_schema(twin_database_url)


def test_baseline_downgrade_removes_everything_it_created(settings: Settings) -> None:
    config = alembic_config(settings=settings)
    command.upgrade(config, BASELINE)
    command.downgrade(config, "base")

    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            assert inspector.get_table_names() == ["alembic_version"]
            assert inspector.get_indexes("alembic_version") == []
            if connection.dialect.name == "sqlite":
                leftovers = connection.exec_driver_sql(
                    "SELECT type, name FROM sqlite_master WHERE tbl_name != 'alembic_version'"
                ).all()
                assert leftovers == []
    finally:
        engine.dispose()


def test_vendored_legacy_sql_is_byte_identical_to_the_spec() -> None:
    if not SPEC_LEGACY_DIR.is_dir():
        pytest.skip(f"{SPEC_LEGACY_DIR} is not beside this clone")
    vendored = sorted(path.name for path in LEGACY_DIR.glob("*.sql"))
    assert vendored == sorted(path.name for path in SPEC_LEGACY_DIR.glob("*.sql"))
    for name in vendored:
        assert (LEGACY_DIR / name).read_bytes() == (SPEC_LEGACY_DIR / name).read_bytes(), name


def test_vendored_release_schemas_are_byte_identical_to_the_spec() -> None:
    spec_releases = SPEC_LEGACY_DIR.parent / "releases"
    if not spec_releases.is_dir():
        pytest.skip(f"{spec_releases} is not beside this clone")
    vendored = sorted(path.name for path in RELEASE_SCHEMA_DIR.glob("*.sql"))
    assert vendored == sorted(path.name for path in spec_releases.glob("*.schema.sql"))
    for name in vendored:
        assert (RELEASE_SCHEMA_DIR / name).read_bytes() == (spec_releases / name).read_bytes()


@pytest.mark.parametrize("released", RELEASED_SCHEMAS, ids=lambda released: released.name)
def test_each_release_file_has_the_schema_adoption_recognises(released: ReleasedSchema) -> None:
    """The schema files adoption reads describe the databases the releases really made."""
    database = release_file(released.schema_file.replace(".schema.sql", ".db"))
    engine = sa.create_engine(sqlite_file_url(database))
    try:
        with engine.connect() as connection:
            shape, definitions = describe_schema(connection), sqlite_definitions(connection)
    finally:
        engine.dispose()
    known = released_sqlite_schema(released)
    assert known.differences(shape, definitions) == []
    assert (shape, definitions) == (known.shape, known.definitions)


@pytest.mark.parametrize(
    ("sql_file", "released"), [("multi_site.sql", MULTI_SITE), ("single_site.sql", SINGLE_SITE)]
)
def test_hand_written_legacy_sql_makes_the_released_schema(
    tmp_path: Path, sql_file: str, released: ReleasedSchema
) -> None:
    """Generated test databases start from these files: they must not drift from the releases."""
    database = tmp_path / "legacy.db"
    with sqlite3.connect(database) as connection:
        connection.executescript((LEGACY_DIR / sql_file).read_text())
    engine = sa.create_engine(sqlite_file_url(database))
    try:
        with engine.connect() as connection:
            assert (
                released_sqlite_schema(released).differences(
                    describe_schema(connection), sqlite_definitions(connection)
                )
                == []
            )
    finally:
        engine.dispose()
