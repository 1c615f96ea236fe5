"""Adopt databases made before migrations existed.

Releases before migrations built the schema with `create_all` and recorded no
revision. Such a database is compared with the baseline revision's schema:

* the same schema (constraint names aside): stamp the baseline;
* the older single-site schema: convert it to the baseline, keeping every
  row, then stamp;
* anything else: refuse, listing the differences, and change nothing.

The caller runs this inside the upgrade's transaction, so a failure anywhere
leaves the database as it was.
"""

import logging
from functools import cache
from importlib.resources import files

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from app.db.errors import UnknownSchemaError
from app.db.schema_shape import TableShape, app_tables, describe_schema, diff_schemas

log = logging.getLogger(__name__)

LEGACY_SITE = "aniworld.to"
MAX_LISTED_DIFFERENCES = 12


def baseline_revision(script: ScriptDirectory) -> str:
    (base,) = script.get_bases()
    return base


def has_unversioned_app_tables(connection: Connection, current_heads: tuple[str, ...]) -> bool:
    return not current_heads and bool(app_tables(connection))


def baseline_shape(script: ScriptDirectory) -> dict[str, TableShape]:
    """The schema the baseline revision creates, built in a scratch SQLite database."""
    return _baseline_shape_cached(script.dir)


@cache
def _baseline_shape_cached(script_dir: str) -> dict[str, TableShape]:
    script = ScriptDirectory(script_dir)
    module = script.get_revision(baseline_revision(script)).module
    engine = sa.create_engine("sqlite://")
    with engine.begin() as scratch:
        with Operations.context(MigrationContext.configure(scratch)):
            module.upgrade()
        return describe_schema(scratch)


@cache
def single_site_shape() -> dict[str, TableShape]:
    ddl = files("app.db.legacy").joinpath("single_site.sql").read_text()
    engine = sa.create_engine("sqlite://")
    with engine.begin() as scratch:
        for statement in ddl.split(";"):
            if statement.strip():
                scratch.exec_driver_sql(statement)
        return describe_schema(scratch)


def adopt_legacy_database(connection: Connection, script: ScriptDirectory) -> str:
    """Bring an unversioned database to the baseline and stamp it; return the baseline."""
    baseline = baseline_revision(script)
    live = describe_schema(connection)
    expected = baseline_shape(script)
    if live == single_site_shape():
        log.info("Converting a single-site database to the baseline schema")
        convert_single_site_to_baseline(connection)
        live = describe_schema(connection)
    differences = diff_schemas(expected, live)
    if differences:
        raise UnknownSchemaError(_refusal(differences))
    MigrationContext.configure(connection).stamp(script, baseline)
    log.info("Adopted an unversioned database as baseline revision %s", baseline)
    return baseline


def _refusal(differences: list[str]) -> str:
    shown = "; ".join(differences[:MAX_LISTED_DIFFERENCES])
    more = len(differences) - MAX_LISTED_DIFFERENCES
    suffix = f"; and {more} more" if more > 0 else ""
    return (
        "the database has tables but no migration history, and its schema is neither "
        f"a released AniBridge schema nor empty ({shown}{suffix}); nothing was changed: "
        "point DATABASE_URL at the right database, or restore a backup"
    )


def convert_single_site_to_baseline(connection: Connection) -> None:
    """The frozen conversion of the pre-multi-site schema; every row gets the one old site."""
    for table, column in (("job", "source_site"), ("clienttask", "site")):
        connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} VARCHAR"))
        connection.execute(text(f"UPDATE {table} SET {column} = :site"), {"site": LEGACY_SITE})
        connection.execute(text(f"CREATE INDEX ix_{table}_{column} ON {table} ({column})"))
    _rebuild_episode_availability_with_site(connection)


def _rebuild_episode_availability_with_site(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE episodeavailability RENAME TO _episodeavailability_old"))
    table = _baseline_episode_availability()
    table.create(connection)
    copied = [c.name for c in table.columns if c.name != "site"]
    names = ", ".join(copied)
    connection.execute(
        text(
            f"INSERT INTO episodeavailability ({names}, site) "
            f"SELECT {names}, :site FROM _episodeavailability_old"
        ),
        {"site": LEGACY_SITE},
    )
    connection.execute(text("DROP TABLE _episodeavailability_old"))


def _baseline_episode_availability() -> sa.Table:
    """`episodeavailability` as the baseline defines it, frozen here on purpose."""
    metadata = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})
    return sa.Table(
        "episodeavailability",
        metadata,
        sa.Column("slug", sa.String(), primary_key=True),
        sa.Column("season", sa.Integer(), primary_key=True),
        sa.Column("episode", sa.Integer(), primary_key=True),
        sa.Column("language", sa.String(), primary_key=True),
        sa.Column("site", sa.String(), primary_key=True),
        sa.Column("available", sa.Boolean(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("vcodec", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.Index("ix_episodeavailability_checked_at", "checked_at"),
    )
