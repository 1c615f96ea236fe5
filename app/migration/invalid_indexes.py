"""Indexes a failed `CREATE INDEX CONCURRENTLY` left behind (PostgreSQL).

A concurrent build that fails (for example on a duplicate under a UNIQUE
index) leaves its index in the catalogue, marked invalid: queries never use it,
every write still maintains it, and it stands in the way of the revision that
builds it again (which then fails with "already exists", or with IF NOT EXISTS
keeps the broken one). So before pending revisions run, the upgrade drops every
invalid index of the schema it migrates, and the revision that failed builds it
afresh.
"""

import logging

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from app.migration.patterns import leaving_transaction

log = logging.getLogger(__name__)

INVALID_INDEXES = text(
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT i.indisvalid AND n.nspname = current_schema() "
    "AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p "
    "WHERE p.index_relid = i.indexrelid) "
    "ORDER BY 1"
)


def invalid_indexes(connection: Connection) -> list[str]:
    """The invalid indexes of the connection's current schema, schema-qualified and quoted.

    An index another session is building concurrently right now is invalid
    until its build ends; it is left alone.
    """
    return list(connection.execute(INVALID_INDEXES).scalars())


def drop_invalid_indexes(context: MigrationContext) -> None:
    """Drop them, concurrently in an autocommit block; in a caller's transaction, in it.

    DROP INDEX CONCURRENTLY cannot run inside a transaction block, and only a
    run that began its own transaction can step out of it (app.migration.patterns).
    """
    names = invalid_indexes(context.connection)
    if not names:
        return
    log.warning(
        "Dropping %s: left invalid by a failed concurrent index build; "
        "the pending revisions build it again",
        ", ".join(names),
    )
    with leaving_transaction(context) as concurrently:
        drop = "DROP INDEX CONCURRENTLY" if concurrently else "DROP INDEX"
        for name in names:
            context.connection.execute(text(f"{drop} IF EXISTS {name}"))
