"""A scratch copy of a live PostgreSQL database, for `anibridge plan` to upgrade for real.

The copy is taken from one snapshot of the live database: a `REPEATABLE READ`
read-only transaction that first takes ACCESS SHARE on every table of the
schema (bounded by the upgrade's lock_timeout, as pg_dump does), reads the
schema from the catalogue, streams every table's rows with `COPY ... TO
STDOUT` into `COPY ... FROM STDIN` on the copy (psycopg's copy API, through the
driver connection SQLAlchemy exposes), and reads each sequence's value. The
live database sees those reads and nothing else.

The copy goes into a new database on the same server (`anibridge_plan_<hex>`);
a role that may not create databases gets a new schema in the live database
instead, reached through `search_path`. It is built from the catalogue rather
than `pg_dump --schema-only`: the image ships no PostgreSQL client, and a
client must match the server's version (docs/plan.md). What is copied, in
the order the restore needs: enum types, sequences, tables (columns with
their types, collations, defaults, identity and generated expressions, NOT
NULL), the rows, then primary keys, unique, check and exclusion constraints,
indexes, foreign keys, sequence ownership and values, and views. Not copied:
functions, triggers, materialized views, rules, comments, grants, and indexes a
failed concurrent build left invalid. Those that can change what an upgrade
does (all but comments and grants) are named in `ScratchCopy.left_out`, for
the plan to say that it ran without them.

The copy is dropped when the block ends, however it ends (a failure, Ctrl-C).
"""

import logging
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.pool import NullPool

from app.migration.errors import MigrationError, describe_database_error

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "anibridge_plan_"
INSUFFICIENT_PRIVILEGE = "42501"
COPY_SESSION = "-csynchronous_commit=off -cmaintenance_work_mem=256MB"
"""The copy's sessions: commits that need not wait for the disk (the copy is thrown away),
and room to sort in memory when its indexes are built (measured below, docs/plan.md)."""


class ScratchCopyError(MigrationError):
    """The copy could not be made (no right to create a database or a schema, a lock wait)."""


@dataclass
class SchemaScript:
    """The live schema as statements: those before the rows, and those after."""

    before_rows: list[str] = field(default_factory=list)
    after_rows: list[str] = field(default_factory=list)
    tables: dict[str, list[str]] = field(default_factory=dict)
    """Each table with the columns its rows are copied by (generated ones left out)."""


@dataclass
class ScratchCopy:
    url: URL
    left_out: list[str] = field(default_factory=list)
    """The live schema's objects the copy does not have ("trigger audit on job", ...)."""


@contextmanager
def scratch_copy(
    url: URL, lock_timeout_s: int, notice: Callable[[str], None]
) -> Iterator[ScratchCopy]:
    """A copy of the database at `url`, dropped when the block ends.

    `notice` hears where the copy is, before it is filled.

    SIGTERM (`docker stop`) is turned into KeyboardInterrupt meanwhile, so the
    copy is dropped then too, as on Ctrl-C.
    """
    live = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with (
            interrupted_by_sigterm(),
            live.connect() as admin,
            scratch_place(admin, url) as (copy_url, description),
        ):
            notice(
                f"Copying one snapshot of the live database into {description} to rehearse "
                "the upgrade there; the live database is only read, and the copy is dropped "
                "afterwards."
            )
            yield ScratchCopy(copy_url, fill_copy(live, copy_url, lock_timeout_s))
    finally:
        live.dispose()


@contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def scratch_place(admin: Connection, url: URL) -> Iterator[tuple[URL, str]]:
    """A new database on the server, else a new schema in the live one; dropped afterwards."""
    name = f"{SCRATCH_PREFIX}{uuid.uuid4().hex[:12]}"
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        admin.exec_driver_sql(f"CREATE DATABASE {quoted}")
        copy_url = url.set(database=name).update_query_dict({"options": COPY_SESSION})
        place = (copy_url, f"a scratch database {name} on the same server")
        drop = f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    except ProgrammingError as exc:
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        create_scratch_schema(admin, quoted, url)
        copy_url = url.update_query_dict({"options": f"-csearch_path={name} {COPY_SESSION}"})
        place = (copy_url, f"a scratch schema {name} in the live database")
        drop = f"DROP SCHEMA IF EXISTS {quoted} CASCADE"
    try:
        yield place
    finally:
        admin.exec_driver_sql(drop)


def create_scratch_schema(admin: Connection, quoted: str, url: URL) -> None:
    try:
        admin.exec_driver_sql(f"CREATE SCHEMA {quoted}")
    except ProgrammingError as exc:
        if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
            raise
        raise ScratchCopyError(
            f"the plan needs a scratch copy, and user {url.username} may neither create a "
            "database nor a schema in the database; grant it CREATEDB, or CREATE on the database"
        ) from None


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def fill_copy(live: Engine, copy_url: URL, lock_timeout_s: int) -> list[str]:
    """Schema, rows and sequence values of one snapshot of `live`, written into the copy.

    Returns the objects of the live schema left out of the copy.
    """
    snapshot = live.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    copy = create_engine(copy_url, poolclass=NullPool)
    try:
        with snapshot.connect() as source, copy.connect() as target:
            source.exec_driver_sql(f"SET LOCAL lock_timeout = '{lock_timeout_s}s'")
            require_schema(source, live.url)
            lock_tables(source)
            script = schema_script(source)
            left_out = [" ".join(row) for row in source.exec_driver_sql(LEFT_OUT)]
            for statement in script.before_rows:
                target.exec_driver_sql(statement)
            for table, columns in script.tables.items():
                copy_rows(source, target, table, columns)
            for statement in [*script.after_rows, *sequence_values(source)]:
                target.exec_driver_sql(statement)
            target.commit()
            source.rollback()
        return left_out
    except DBAPIError as exc:
        raise ScratchCopyError(
            f"could not copy the database for the plan: {describe_database_error(exc, copy_url)}"
        ) from None
    finally:
        copy.dispose()


def require_schema(source: Connection, url: URL) -> None:
    """A role that may use no schema on its search_path would copy nothing: say so instead."""
    if source.exec_driver_sql("SELECT current_schema()").scalar() is None:
        raise ScratchCopyError(
            f"user {url.username} may use no schema on its search_path in the database "
            f"{url.database}; grant it USAGE on the application's schema"
        )


def lock_tables(source: Connection) -> None:
    """ACCESS SHARE on every table first, as pg_dump does: no DDL changes one mid-copy."""
    tables = [row[0] for row in source.exec_driver_sql(TABLES)]
    if tables:
        source.exec_driver_sql(f"LOCK TABLE {', '.join(tables)} IN ACCESS SHARE MODE")


def copy_rows(source: Connection, target: Connection, table: str, columns: list[str]) -> None:
    """Stream `table`'s rows from the snapshot into the copy, in COPY's text format.

    FREEZE (the table was created in this transaction) writes the rows frozen
    and visible to all: otherwise the first scan of the copy (the rehearsal's
    counts, the upgrade's own) sets the hint bit of every row and writes every
    page out again, and on 1,000,000 jobs that burst of writes made the
    service's commits on the live database wait 100-230 ms (benchmark 9,
    docs/performance.md).
    """
    listed = ", ".join(columns)
    reader = source.connection.driver_connection.cursor()
    writer = target.connection.driver_connection.cursor()
    with (
        reader.copy(f"COPY {table} ({listed}) TO STDOUT") as rows_out,
        writer.copy(f"COPY {table} ({listed}) FROM STDIN WITH (FREEZE)") as rows_in,
    ):
        for block in rows_out:
            rows_in.write(block)


# The catalogue, read inside the snapshot. Every query is limited to the current
# schema; names come back quoted (quote_ident) and unqualified, for the copy's.

IN_SCHEMA = "relnamespace = current_schema()::regnamespace"
TABLES = f"SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'r' AND {IN_SCHEMA}"
ENUMS = """
SELECT quote_ident(t.typname), string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = current_schema()::regnamespace GROUP BY t.oid, t.typname ORDER BY t.oid
"""
SEQUENCES = f"""
SELECT quote_ident(c.relname), format_type(s.seqtypid, NULL), s.seqincrement, s.seqmin,
       s.seqmax, s.seqstart, s.seqcache, s.seqcycle
FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
WHERE c.{IN_SCHEMA} AND NOT EXISTS (
    SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')
ORDER BY c.oid
"""
COLUMNS = f"""
SELECT quote_ident(c.relname), quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
       CASE WHEN a.attcollation <> t.typcollation THEN quote_ident(co.collname) END,
       pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attidentity, a.attgenerated
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relkind = 'r' AND c.{IN_SCHEMA} AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.oid, a.attnum
"""
CONSTRAINTS = """
SELECT quote_ident(c.relname), quote_ident(k.conname), k.contype, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
WHERE k.connamespace = current_schema()::regnamespace AND k.contype IN ('p', 'u', 'c', 'x', 'f')
ORDER BY k.contype = 'f', c.oid, k.oid
"""
INDEXES = f"""
SELECT pg_get_indexdef(i.indexrelid), quote_ident(c.relname)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.{IN_SCHEMA} AND c.relkind = 'r' AND i.indisvalid AND NOT EXISTS (
    SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p', 'u', 'x'))
ORDER BY i.indexrelid
"""
OWNED_SEQUENCES = f"""
SELECT quote_ident(s.relname), quote_ident(t.relname), quote_ident(a.attname)
FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S' AND s.{IN_SCHEMA} AND d.deptype = 'a'
ORDER BY s.oid
"""
VIEWS = f"""
SELECT quote_ident(relname), pg_get_viewdef(oid) FROM pg_class
WHERE relkind = 'v' AND {IN_SCHEMA} ORDER BY oid
"""
LEFT_OUT = f"""
SELECT 'function', p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = current_schema()::regnamespace AND NOT EXISTS (
    SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
    AND d.deptype = 'e')
UNION ALL
SELECT 'trigger', quote_ident(t.tgname) || ' on ' || quote_ident(c.relname)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.{IN_SCHEMA} AND NOT t.tgisinternal
UNION ALL
SELECT 'rule', quote_ident(r.rulename) || ' on ' || quote_ident(c.relname)
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
WHERE c.{IN_SCHEMA} AND c.relkind IN ('r', 'p') AND r.rulename <> '_RETURN'
UNION ALL
SELECT 'materialized view', quote_ident(relname) FROM pg_class WHERE relkind = 'm' AND {IN_SCHEMA}
UNION ALL
SELECT 'invalid index', quote_ident(x.relname) || ' on ' || quote_ident(c.relname)
FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid
WHERE c.{IN_SCHEMA} AND NOT i.indisvalid
ORDER BY 1, 2
"""
ALL_SEQUENCES = f"SELECT quote_ident(relname) FROM pg_class WHERE relkind = 'S' AND {IN_SCHEMA}"
INDEX_DEFINITION = re.compile(r"^(CREATE (?:UNIQUE )?INDEX \S+ ON )(?:ONLY )?\S+( USING .*)$", re.S)
IDENTITY = {"a": "GENERATED ALWAYS AS IDENTITY", "d": "GENERATED BY DEFAULT AS IDENTITY"}


def schema_script(source: Connection) -> SchemaScript:
    """The statements that rebuild the live schema's objects, unqualified."""
    script = SchemaScript()
    for name, labels in source.exec_driver_sql(ENUMS):
        script.before_rows.append(f"CREATE TYPE {name} AS ENUM ({labels})")
    script.before_rows.extend(sequence_definitions(source))
    columns: dict[str, list[str]] = {}
    for table, *column in source.exec_driver_sql(COLUMNS):
        columns.setdefault(table, []).append(column_definition(*column))
        if not column[-1]:
            script.tables.setdefault(table, []).append(column[0])
    script.before_rows.extend(
        f"CREATE TABLE {table} ({', '.join(defined)})" for table, defined in columns.items()
    )
    for table, name, _kind, definition in source.exec_driver_sql(CONSTRAINTS):
        script.after_rows.append(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    for definition, table in source.exec_driver_sql(INDEXES):
        script.after_rows.append(INDEX_DEFINITION.sub(rf"\g<1>{table}\g<2>", definition))
    for sequence, table, column in source.exec_driver_sql(OWNED_SEQUENCES):
        script.after_rows.append(f"ALTER SEQUENCE {sequence} OWNED BY {table}.{column}")
    for name, definition in source.exec_driver_sql(VIEWS):
        script.after_rows.append(f"CREATE VIEW {name} AS {definition.strip().rstrip(';')}")
    return script


def sequence_definitions(source: Connection) -> Iterator[str]:
    for name, kind, increment, low, high, start, cache, cycle in source.exec_driver_sql(SEQUENCES):
        yield (
            f"CREATE SEQUENCE {name} AS {kind} INCREMENT {increment} MINVALUE {low} "
            f"MAXVALUE {high} START {start} CACHE {cache} {'CYCLE' if cycle else 'NO CYCLE'}"
        )


def column_definition(
    name: str,
    kind: str,
    collation: str | None,
    default: str | None,
    not_null: bool,
    identity: str,
    generated: str,
) -> str:
    parts = [name, kind]
    if collation:
        parts.append(f"COLLATE {collation}")
    if identity:
        parts.append(IDENTITY[identity])
    elif generated:
        parts.append(f"GENERATED ALWAYS AS ({default}) STORED")
    elif default is not None:
        parts.append(f"DEFAULT {default}")
    if not_null:
        parts.append("NOT NULL")
    return " ".join(parts)


def sequence_values(source: Connection) -> Iterator[str]:
    """`setval` for every sequence (identity ones included), as the snapshot read it."""
    for (name,) in source.exec_driver_sql(ALL_SEQUENCES).all():
        last, called = source.exec_driver_sql(f"SELECT last_value, is_called FROM {name}").one()
        identity = name.replace("'", "''")
        yield f"SELECT setval('{identity}', {last}, {'true' if called else 'false'})"
