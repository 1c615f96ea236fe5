"""Reflect a live schema into a comparable shape, and put schema differences into words.

The one place that words differences: between a database and a schema it
should have (`diff_schemas`, for adoption and the released-schema tests) and
between a database and the models (`describe_difference`, for Alembic's
comparison in `anibridge status`). Both say what is missing and what is extra
with `missing` and `extra`, against what they compare with.

Types are compared exactly as the connection's dialect spells them: on
PostgreSQL INTEGER is not BIGINT and a naive TIMESTAMP is not a timestamp with
time zone. Shapes are therefore only compared within one dialect. The names of
primary keys and unique constraints are left out: databases made by
`create_all` carry SQLite's unnamed constraints, migrated ones carry the naming
convention's names, and both are the same schema. Index names are kept, since
Alembic compares indexes by name.
"""

from dataclasses import dataclass

from sqlalchemy import Connection, Dialect, inspect, types
from sqlalchemy.exc import CompileError

from app.migration.journal import HISTORY_TABLE

IGNORED_TABLES = frozenset({"alembic_version", HISTORY_TABLE})


@dataclass(frozen=True)
class ColumnShape:
    name: str
    type: str
    nullable: bool
    default: str | None


@dataclass(frozen=True)
class IndexShape:
    name: str
    columns: tuple[str, ...]
    unique: bool
    options: str

    def __str__(self) -> str:
        kind = "unique index" if self.unique else "index"
        where = f" {self.options}" if self.options else ""
        return f"{kind} {self.name} on ({', '.join(self.columns)}){where}"


@dataclass(frozen=True)
class TableShape:
    columns: tuple[ColumnShape, ...]
    primary_key: tuple[str, ...]
    indexes: frozenset[IndexShape]
    constraints: frozenset[str]

    def column(self, name: str) -> ColumnShape | None:
        return next((column for column in self.columns if column.name == name), None)


def type_name(column_type: types.TypeEngine, dialect: Dialect) -> str:
    """The type as the dialect writes it in DDL ("untyped" for a column declared without one)."""
    try:
        return column_type.compile(dialect=dialect)
    except CompileError:
        return "untyped"


def describe_table(connection: Connection, table: str, schema: str | None = None) -> TableShape:
    inspector = inspect(connection)
    columns = tuple(
        ColumnShape(
            column["name"],
            type_name(column["type"], connection.dialect),
            bool(column["nullable"]),
            column.get("default"),
        )
        for column in inspector.get_columns(table, schema)
    )
    primary_key = tuple(inspector.get_pk_constraint(table, schema)["constrained_columns"])
    indexes = frozenset(
        IndexShape(
            index["name"],
            tuple(str(column) for column in index["column_names"]),
            bool(index["unique"]),
            " ".join(f"{key}={value}" for key, value in sorted(index["dialect_options"].items()))
            if index.get("dialect_options")
            else "",
        )
        for index in inspector.get_indexes(table, schema)
        if not index.get("duplicates_constraint")
    )
    return TableShape(columns, primary_key, indexes, _constraints(inspector, table, schema))


def _constraints(inspector, table: str, schema: str | None) -> frozenset[str]:
    """Unique, check and foreign-key constraints, each described in words."""
    unique = {
        f"unique constraint on ({', '.join(uq['column_names'])})"
        for uq in inspector.get_unique_constraints(table, schema)
    }
    checks = {
        f"check constraint ({ck['sqltext']})"
        for ck in inspector.get_check_constraints(table, schema)
    }
    foreign = {
        f"foreign key ({', '.join(fk['constrained_columns'])}) referencing "
        f"{fk['referred_table']} ({', '.join(fk['referred_columns'])})"
        for fk in inspector.get_foreign_keys(table, schema)
    }
    return frozenset(unique | checks | foreign)


def app_tables(connection: Connection, schema: str | None = None) -> list[str]:
    return sorted(set(inspect(connection).get_table_names(schema)) - IGNORED_TABLES)


def describe_schema(connection: Connection, schema: str | None = None) -> dict[str, TableShape]:
    return {
        table: describe_table(connection, table, schema) for table in app_tables(connection, schema)
    }


def diff_schemas(expected: dict[str, TableShape], actual: dict[str, TableShape]) -> list[str]:
    """The differences as sentences (`table job: column created_at is missing`); empty if none."""
    problems = [missing(f"table {name}") for name in sorted(expected.keys() - actual.keys())]
    problems += [extra(f"table {name}") for name in sorted(actual.keys() - expected.keys())]
    for name in sorted(expected.keys() & actual.keys()):
        problems += [
            f"table {name}: {problem}" for problem in _diff_table(expected[name], actual[name])
        ]
    return problems


def _diff_table(expected: TableShape, actual: TableShape) -> list[str]:
    problems = _diff_columns(expected, actual)
    if expected.primary_key != actual.primary_key:
        problems.append(
            f"the primary key is {_listing(actual.primary_key)}, "
            f"expected {_listing(expected.primary_key)}"
        )
    problems += _diff_indexes(expected.indexes, actual.indexes)
    problems += [missing(item) for item in sorted(expected.constraints - actual.constraints)]
    problems += [extra(item) for item in sorted(actual.constraints - expected.constraints)]
    return problems


def _diff_columns(expected: TableShape, actual: TableShape) -> list[str]:
    problems = []
    for want in expected.columns:
        have = actual.column(want.name)
        if have is None:
            problems.append(missing(f"column {want.name}"))
            continue
        if have.type != want.type:
            problems.append(f"column {want.name} is {have.type}, expected {want.type}")
        if have.nullable != want.nullable:
            problems.append(
                f"column {want.name} {_nullability(have.nullable)}, "
                f"expected it {_nullability(want.nullable).removeprefix('is ')}"
            )
        if have.default != want.default:
            problems.append(
                f"column {want.name} has default {have.default or 'none'}, "
                f"expected {want.default or 'none'}"
            )
    problems += [
        extra(f"column {have.name} ({have.type})")
        for have in actual.columns
        if expected.column(have.name) is None
    ]
    if not problems and expected.columns != actual.columns:
        problems.append(
            f"the columns are in the order {_listing(c.name for c in actual.columns)}, "
            f"expected {_listing(c.name for c in expected.columns)}"
        )
    return problems


def _diff_indexes(expected: frozenset[IndexShape], actual: frozenset[IndexShape]) -> list[str]:
    wanted = {index.name: index for index in expected}
    found = {index.name: index for index in actual}
    problems = []
    for name in sorted(wanted.keys() | found.keys()):
        want, have = wanted.get(name), found.get(name)
        if have is None:
            problems.append(missing(str(want)))
        elif want is None:
            problems.append(f'{extra(str(have))} (if you made it, drop it: DROP INDEX "{name}")')
        elif have != want:
            problems.append(f"{have} should be {want}")
    return problems


MODELS = "the models"


def missing(thing: str, against: str | None = None) -> str:
    """`thing` is not in the database, though the schema it is compared `against` has it."""
    if against is None:
        return f"{thing} is missing"
    return f"{thing} is in {against} but not in the database"


def extra(thing: str, against: str | None = None) -> str:
    """`thing` is in the database, though the schema it is compared `against` lacks it."""
    if against is None:
        return f"{thing} is not part of that schema"
    return f"{thing} is in the database but not in {against}"


def flatten(diffs: list) -> list[tuple]:
    """Alembic groups column modifications in lists; one tuple per difference here."""
    flat = []
    for diff in diffs:
        flat.extend(diff if isinstance(diff, list) else [diff])
    return flat


def describe_difference(diff: tuple) -> str:
    """One of Alembic's comparison results (`compare_metadata`) against the models, in words."""
    kind = diff[0]
    side = missing if kind.startswith("add") else extra
    if kind in ("add_table", "remove_table"):
        return side(f"table {diff[1].name}", MODELS)
    if kind in ("add_column", "remove_column"):
        return side(f"column {diff[2]}.{diff[3].name}", MODELS)
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        item = diff[1]
        what = "index" if "index" in kind else "constraint"
        columns = ", ".join(column.name for column in item.columns)
        return side(f"{what} {item.name} on {item.table.name} ({columns})", MODELS)
    if kind in ("add_fk", "remove_fk"):
        return side(f"foreign key {diff[1].name} on {diff[1].parent.name}", MODELS)
    if kind.startswith("modify_"):
        _, _, table, column, _, database_value, model_value = diff
        what = kind.removeprefix("modify_").replace("_", " ")
        return (
            f"column {table}.{column}: {what} is {database_value!s} in the database, "
            f"{model_value!s} in {MODELS}"
        )
    return str(diff)


def _nullability(nullable: bool) -> str:
    return "is nullable" if nullable else "is NOT NULL"


def _listing(names) -> str:
    return f"({', '.join(names)})"
