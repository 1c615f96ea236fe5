"""Adopt databases made before migrations existed.

Releases before migrations built the schema with `create_all` and recorded no
revision. Three schemas exist on users' disks (app/migration/adoption/releases/ holds
each one as the real release files store it):

* multi-site (v1.17.0 ... v2.1.0): the baseline's schema; stamped as it is;
* single-site (v1.12.43-alpha ... v1.16.1): its tables are rebuilt into the
  multi-site ones, every row kept, the new site columns set to the one site
  those releases knew; then stamped;
* half-converted (a single-site file started by a multi-site release, which
  rebuilt `episodeavailability` and then crashed on every start): converted
  the same way.

Anything else is refused before anything is written (and before any backup),
naming the closest schema and the differences. On PostgreSQL, where no release
ever ran, only the baseline's own schema on that engine, types and all, is
adopted.

The caller runs the conversion inside the upgrade's transaction, so a failure
anywhere leaves the database as it was.
"""

import logging
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.migration.adoption.schema_shape import (
    IGNORED_TABLES,
    TableShape,
    app_tables,
    describe_schema,
    diff_schemas,
)
from app.migration.errors import MigrationError, UnknownSchemaError
from app.migration.revisions import migration_context
from app.migration.views_and_triggers import (
    check_views_and_triggers,
    user_views_and_triggers,
    views_and_triggers_set_aside,
)

log = logging.getLogger(__name__)

LEGACY_SITE = "aniworld.to"
SITE_COLUMNS = frozenset(
    {("job", "source_site"), ("clienttask", "site"), ("episodeavailability", "site")}
)
MAX_LISTED_DIFFERENCES = 12
PROBE_SCHEMA = "anibridge_adoption_probe"


@dataclass(frozen=True)
class ReleasedSchema:
    name: str
    releases: str
    schema_file: str


MULTI_SITE = ReleasedSchema("multi-site", "v1.17.0 ... v2.1.0", "v2.1.0.schema.sql")
SINGLE_SITE = ReleasedSchema("single-site", "v1.12.43-alpha ... v1.16.1", "v1.16.1.schema.sql")
HALF_CONVERTED = ReleasedSchema(
    "half-converted",
    "a single-site release followed by one start of v1.17.0 ... v2.1.0",
    "v1.16.1-then-v2.1.0.schema.sql",
)
RELEASED_SCHEMAS = (MULTI_SITE, SINGLE_SITE, HALF_CONVERTED)


@dataclass(frozen=True)
class KnownSchema:
    """A schema an unversioned database may have: its shape and, on SQLite, its statements."""

    description: str
    shape: dict[str, TableShape]
    definitions: dict[str, str]
    released: ReleasedSchema | None = None

    def differences(self, shape: dict[str, TableShape], definitions: dict[str, str]) -> list[str]:
        found = diff_schemas(self.shape, shape)
        if found or not self.definitions:
            return found
        return [
            f"{name}: its definition is `{definitions[name]}`, expected `{self.definitions[name]}`"
            for name in sorted(self.definitions.keys() & definitions.keys())
            if definitions[name] != self.definitions[name]
        ]


def baseline_revision(script: ScriptDirectory) -> str:
    (base,) = script.get_bases()
    return base


def has_unversioned_app_tables(connection: Connection, current_heads: tuple[str, ...]) -> bool:
    return not current_heads and bool(app_tables(connection))


def normalised_sql(statement: str) -> str:
    """A CREATE statement with layout and identifier quoting taken out."""
    text = re.sub(r"\s+", " ", statement).strip()
    text = re.sub(r"\s*([(),])\s*", r"\1", text)
    return re.sub(r'"(\w+)"', r"\1", text)


def release_statements(released: ReleasedSchema) -> list[str]:
    """The CREATE statements of a released schema: tables first, then indexes.

    The files list `sqlite_master` sorted by type and name; comment lines stand
    for SQLite's automatic indexes, which have no statement.
    """
    text = files("app.migration.adoption").joinpath("releases", released.schema_file).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    statements = [part.strip() for part in "\n".join(lines).split(";") if part.strip()]
    return sorted(statements, key=lambda statement: not statement.startswith("CREATE TABLE"))


def sqlite_definitions(connection: Connection) -> dict[str, str]:
    """Normalised CREATE statements of tables and indexes (views and triggers are the user's)."""
    rows = connection.exec_driver_sql(
        "SELECT name, tbl_name, sql FROM sqlite_master "
        "WHERE type IN ('table', 'index') AND sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
    )
    return {name: normalised_sql(sql) for name, table, sql in rows if table not in IGNORED_TABLES}


@cache
def released_sqlite_schema(released: ReleasedSchema) -> KnownSchema:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as scratch:
        for statement in release_statements(released):
            scratch.exec_driver_sql(statement)
        return KnownSchema(
            f"the {released.name} schema of {released.releases}",
            describe_schema(scratch),
            sqlite_definitions(scratch),
            released,
        )


def baseline_schema_on(connection: Connection, script: ScriptDirectory) -> KnownSchema:
    """The schema the baseline creates on this server, built and dropped in a savepoint."""
    module = script.get_revision(baseline_revision(script)).module
    savepoint = connection.begin_nested()
    try:
        connection.exec_driver_sql(f"CREATE SCHEMA {PROBE_SCHEMA}")
        connection.exec_driver_sql(f"SET LOCAL search_path TO {PROBE_SCHEMA}")
        with Operations.context(migration_context(connection)):
            module.upgrade()
        shape = describe_schema(connection, PROBE_SCHEMA)
    finally:
        savepoint.rollback()
    return KnownSchema(
        f"the baseline schema as this release creates it on {connection.dialect.name}", shape, {}
    )


def known_schemas(connection: Connection, script: ScriptDirectory) -> list[KnownSchema]:
    if connection.dialect.name == "sqlite":
        return [released_sqlite_schema(released) for released in RELEASED_SCHEMAS]
    return [baseline_schema_on(connection, script)]


def recognise_unversioned_database(connection: Connection, script: ScriptDirectory) -> KnownSchema:
    """Which known schema the database has; refuse, having written nothing, if none."""
    shape = describe_schema(connection)
    definitions = sqlite_definitions(connection) if connection.dialect.name == "sqlite" else {}
    candidates = [
        (known, known.differences(shape, definitions))
        for known in known_schemas(connection, script)
    ]
    for known, differences in candidates:
        if not differences:
            if user_views_and_triggers(connection):
                check_views_and_triggers(connection, "nothing was changed")
            return known
    closest, differences = min(candidates, key=lambda candidate: len(candidate[1]))
    raise UnknownSchemaError(refusal(closest, differences))


def refusal(closest: KnownSchema, differences: list[str]) -> str:
    shown = "; ".join(differences[:MAX_LISTED_DIFFERENCES])
    more = len(differences) - MAX_LISTED_DIFFERENCES
    suffix = f"; and {more} more" if more > 0 else ""
    return (
        "the database has tables but no migration history, and its schema is not one this "
        f"release can adopt; it is closest to {closest.description}, which differs "
        f"as follows: {shown}{suffix}. Nothing was changed: undo these differences, point "
        "DATABASE_URL at the right database, or restore a backup"
    )


def adopt_legacy_database(
    connection: Connection, script: ScriptDirectory, known: KnownSchema
) -> str:
    """Bring a recognised unversioned database to the baseline and stamp it; return the baseline."""
    baseline = baseline_revision(script)
    if known.released not in (None, MULTI_SITE):
        log.info("Converting a %s database to the multi-site schema", known.released.name)
        convert_to_multi_site(connection)
    migration_context(connection).stamp(script, baseline)
    log.info("Adopted an unversioned database as baseline revision %s", baseline)
    return baseline


def convert_to_multi_site(connection: Connection) -> None:
    """Rebuild each table that differs from the multi-site release's, as that release wrote it."""
    target = released_sqlite_schema(MULTI_SITE)
    live = sqlite_definitions(connection)
    rebuilt = [table for table in target.shape if live.get(table) != target.definitions[table]]
    with views_and_triggers_set_aside(connection):
        for table in rebuilt:
            rebuild_table(connection, table)
    if sqlite_definitions(connection) != target.definitions:
        raise MigrationError(
            "the conversion did not produce the multi-site schema; the upgrade was rolled back"
        )
    refresh_statistics(connection, rebuilt)


def rebuild_table(connection: Connection, table: str) -> None:
    """Copy `table` into the multi-site definition, the rename trick SQLite's docs describe."""
    statements = multi_site_statements(table)
    temporary = f"_anibridge_adopt_{table}"
    create = re.sub(r"^CREATE TABLE \S+", f'CREATE TABLE "{temporary}"', statements[0])
    connection.exec_driver_sql(create)
    present = {row[1] for row in connection.exec_driver_sql(f'PRAGMA table_info("{table}")')}
    columns = [column.name for column in released_sqlite_schema(MULTI_SITE).shape[table].columns]
    connection.exec_driver_sql(
        f'INSERT INTO "{temporary}" ({", ".join(columns)}) '
        f'SELECT {", ".join(_source(table, column, present) for column in columns)} FROM "{table}"'
    )
    connection.exec_driver_sql(f'DROP TABLE "{table}"')
    connection.exec_driver_sql(f'ALTER TABLE "{temporary}" RENAME TO "{table}"')
    for statement in statements[1:]:
        connection.exec_driver_sql(statement)


def _source(table: str, column: str, present: set[str]) -> str:
    if column in present:
        return column
    if (table, column) in SITE_COLUMNS:
        return f"'{LEGACY_SITE}'"
    raise MigrationError(
        f"table {table}: no value for the new column {column}; the upgrade was rolled back"
    )


def multi_site_statements(table: str) -> list[str]:
    """The CREATE TABLE statement of `table`, then its CREATE INDEX statements."""
    statements = release_statements(MULTI_SITE)
    create = [s for s in statements if re.match(rf"CREATE TABLE {table} \(", s)]
    indexes = [s for s in statements if re.match(rf"CREATE INDEX \w+ ON {table} \(", s)]
    return create + indexes


def refresh_statistics(connection: Connection, tables: list[str]) -> None:
    """Give rebuilt tables fresh ANALYZE statistics if the user kept statistics."""
    has_statistics = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
    ).first()
    if has_statistics:
        for table in tables:
            connection.exec_driver_sql(f'ANALYZE "{table}"')
