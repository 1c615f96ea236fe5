"""base -> head -> base -> head with rows, on SQLite and PostgreSQL.

Each revision's rows (tests/revision_data.py) are written when the database
reaches that revision; every later step that keeps a table must keep its rows.
"""

import sqlalchemy as sa
from alembic import command

from app.config import Settings
from app.engine import make_engine
from app.migration.adoption.schema_shape import IGNORED_TABLES
from app.migration.guarded_run import database_revision
from app.migration.revisions import alembic_config, script_directory
from tests.revision_data import AT_REVISION_DATA, BASELINE, STRM_URL_MAPPING


def migrate(settings: Settings, direction: str, revision: str) -> None:
    getattr(command, direction)(alembic_config(settings=settings), revision)


def insert_revision_rows(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as connection:
        for table_name, rows in AT_REVISION_DATA[revision].items():
            table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
            connection.execute(table.insert(), rows)


def table_rows(engine: sa.Engine, table_name: str) -> list[tuple]:
    with engine.connect() as connection:
        table = sa.Table(table_name, sa.MetaData(), autoload_with=connection)
        return sorted(connection.execute(sa.select(table)).all())


def app_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - IGNORED_TABLES


def test_the_revision_chain_is_what_this_test_walks() -> None:
    chain = [rev.revision for rev in script_directory().walk_revisions("base", "heads")]
    assert chain[::-1] == [BASELINE, STRM_URL_MAPPING]


def test_rows_survive_base_head_base_head(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        migrate(settings, "upgrade", BASELINE)
        insert_revision_rows(engine, BASELINE)
        released = {table: table_rows(engine, table) for table in AT_REVISION_DATA[BASELINE]}
        assert all(len(rows) == 1 for rows in released.values())

        migrate(settings, "upgrade", "head")
        insert_revision_rows(engine, STRM_URL_MAPPING)
        strm_rows = table_rows(engine, "strm_url_mapping")
        assert {table: table_rows(engine, table) for table in released} == released

        migrate(settings, "downgrade", BASELINE)
        assert "strm_url_mapping" not in app_tables(engine)
        assert {table: table_rows(engine, table) for table in released} == released

        migrate(settings, "upgrade", "head")
        assert {table: table_rows(engine, table) for table in released} == released
        assert table_rows(engine, "strm_url_mapping") == []
        insert_revision_rows(engine, STRM_URL_MAPPING)
        assert table_rows(engine, "strm_url_mapping") == strm_rows

        migrate(settings, "downgrade", "base")
        assert app_tables(engine) == set()
        assert database_revision(settings) == ()

        migrate(settings, "upgrade", "head")
        assert database_revision(settings) == (STRM_URL_MAPPING,)
        assert all(table_rows(engine, table) == [] for table in app_tables(engine))
    finally:
        engine.dispose()
