"""Views and triggers users added to a SQLite database, kept across table rebuilds.

No release and no revision creates a view or a trigger, so every one in the
database is the user's. SQLite's `ALTER TABLE ... RENAME` re-checks every
view and trigger of the schema, so the rebuild that Alembic's batch mode and
the adoption of old databases perform (create a new table, copy the rows,
drop the old table, rename the new one) fails on a view that reads the table
(`error in view v: no such table: main.job`), and dropping the old table drops
the triggers defined on it. So both are taken out before such work and put
back afterwards exactly as the user wrote them; if one of them no longer works
with the new schema, the upgrade stops and is rolled back.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from app.migration.errors import MigrationError, database_reason

PROBE_TABLE = "_anibridge_schema_probe"


def user_views_and_triggers(connection: Connection) -> list[tuple[str, str, str]]:
    """(type, name, SQL) of every view, then every trigger, in the order they were made."""
    if connection.dialect.name != "sqlite":
        return []
    return connection.exec_driver_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') "
        "AND sql IS NOT NULL ORDER BY type = 'trigger', rowid"
    ).all()


def check_views_and_triggers(connection: Connection, outcome: str) -> None:
    """Refuse if a view or trigger does not work with the schema as it is now.

    A throwaway table renamed inside a savepoint makes SQLite check every view
    and trigger of the schema, as it does for any rename; nothing is kept.
    """
    savepoint = connection.begin_nested()
    try:
        connection.exec_driver_sql(f"CREATE TABLE {PROBE_TABLE} (x)")
        connection.exec_driver_sql(f"ALTER TABLE {PROBE_TABLE} RENAME TO {PROBE_TABLE}_renamed")
    except DBAPIError as exc:
        raise MigrationError(
            "a view or trigger you added does not work with the schema "
            f"({database_reason(exc, None)}); {outcome}: drop or fix it, then start again"
        ) from None
    finally:
        savepoint.rollback()


@contextmanager
def views_and_triggers_set_aside(connection: Connection) -> Iterator[None]:
    """Drop the user's views and triggers for the duration, then make them again as written."""
    saved = user_views_and_triggers(connection)
    for kind, name, _sql in reversed(saved):
        connection.exec_driver_sql(f'DROP {kind.upper()} IF EXISTS "{name}"')
    yield
    for kind, name, sql in saved:
        try:
            connection.exec_driver_sql(sql)
        except DBAPIError as exc:
            raise MigrationError(
                f"the {kind} {name} you added cannot be made again after the schema change "
                f"({database_reason(exc, None)}); the upgrade was rolled back: drop or change "
                f"the {kind}, then start again"
            ) from None
    if saved:
        check_views_and_triggers(connection, "the upgrade was rolled back")
