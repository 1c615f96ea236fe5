"""Reflect a live schema into a comparable shape and list differences.

Constraint names are left out on purpose: databases made by `create_all`
carry SQLite's unnamed constraints, migrated ones carry the naming
convention's names, and both are the same schema. Types are compared by their
generic SQLAlchemy kind so a SQLite and a PostgreSQL schema can be compared
(integer widths fold together: byte counts are INTEGER on SQLite and BIGINT on
PostgreSQL by design; autogenerate's type comparison still catches width drift).
"""

from dataclasses import dataclass

from sqlalchemy import Connection, inspect, types

IGNORED_TABLES = frozenset({"alembic_version"})


@dataclass(frozen=True)
class TableShape:
    columns: frozenset[tuple[str, str, bool]]
    primary_key: frozenset[str]
    indexes: frozenset[tuple[tuple[str, ...], bool]]


def generic_type_name(column_type: types.TypeEngine) -> str:
    try:
        generic = column_type.as_generic()
    except NotImplementedError:
        return type(column_type).__name__.upper()
    if isinstance(generic, types.Float):
        return "FLOAT"
    if isinstance(generic, types.Integer):
        return "INTEGER"
    return type(generic).__name__.upper()


def describe_table(connection: Connection, table: str) -> TableShape:
    inspector = inspect(connection)
    columns = frozenset(
        (col["name"], generic_type_name(col["type"]), bool(col["nullable"]))
        for col in inspector.get_columns(table)
    )
    primary_key = frozenset(inspector.get_pk_constraint(table)["constrained_columns"])
    indexes = frozenset(
        (tuple(ix["column_names"]), bool(ix["unique"])) for ix in inspector.get_indexes(table)
    )
    unique_constraints = frozenset(
        (tuple(uq["column_names"]), True) for uq in inspector.get_unique_constraints(table)
    )
    return TableShape(columns, primary_key, indexes | unique_constraints)


def app_tables(connection: Connection) -> list[str]:
    return sorted(set(inspect(connection).get_table_names()) - IGNORED_TABLES)


def describe_schema(connection: Connection) -> dict[str, TableShape]:
    return {table: describe_table(connection, table) for table in app_tables(connection)}


def diff_schemas(expected: dict[str, TableShape], actual: dict[str, TableShape]) -> list[str]:
    """Human-readable differences, empty when the shapes are equal."""
    problems = [f"table {name} is missing" for name in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected table {name}" for name in sorted(actual.keys() - expected.keys())]
    for name in sorted(expected.keys() & actual.keys()):
        problems += _diff_table(name, expected[name], actual[name])
    return problems


def _diff_table(name: str, expected: TableShape, actual: TableShape) -> list[str]:
    problems = []
    for label, want, have in (
        ("column", expected.columns, actual.columns),
        ("index", expected.indexes, actual.indexes),
    ):
        problems += [f"{name}: {label} {item} is missing" for item in sorted(want - have)]
        problems += [f"{name}: unexpected {label} {item}" for item in sorted(have - want)]
    if expected.primary_key != actual.primary_key:
        problems.append(
            f"{name}: primary key is {sorted(actual.primary_key)}, "
            f"expected {sorted(expected.primary_key)}"
        )
    return problems
