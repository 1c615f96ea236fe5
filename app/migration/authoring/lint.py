"""A lint for revisions that can lose data, run by a test in the suite and by
`python -m app.migration.authoring.lint`.

Each revision's `upgrade()` is run against a recording stand-in for Alembic's
DDL implementation (offline, PostgreSQL dialect, nothing executed), which sees
every operation, batch blocks included. Flagged:

* `drop_table <table>` and `drop_column <table>.<column>`: the rows or values go;
* `narrow_type <table>.<column>`: a type change that may not hold every old
  value (shorter string, smaller integer, another kind of type, or a change
  whose old type the revision does not state);
* `not_null <table>.<column>`: a NOT NULL column added without a server
  default, or a column made NOT NULL with no server default and no data step
  (`op.execute`) before it in the revision: it fails on a table with rows, or
  needs a fill.

A revision acknowledges a flagged operation with a module-level dict whose
keys are exactly those strings and whose values say why it is safe:

    acknowledged_data_loss = {
        "drop_column job.note": "note was never written by any release",
    }

An acknowledgement for an operation the revision does not perform is flagged
too, so the list stays true. Downgrades are not linted: undoing a revision
drops what it added by design, and a SQLite downgrade is backed up first.
"""

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.ddl.impl import DefaultImpl
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import Script, ScriptDirectory

from app.migration.authoring.autogenerate import generic_type

ACKNOWLEDGEMENTS = "acknowledged_data_loss"
INTEGER_WIDTHS = {sa.SmallInteger: 1, sa.Integer: 2, sa.BigInteger: 3}


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.problem}"


class RecordingImpl(DefaultImpl):
    """Alembic's DDL implementation, with what may lose data recorded instead of run."""

    def __init__(self, context: MigrationContext) -> None:
        super().__init__(context.dialect, None, True, True, io.StringIO(), context.opts)
        self.flags: list[tuple[str, str]] = []
        self.data_steps = 0

    def drop_table(self, table: sa.Table, **_kw: Any) -> None:
        self.flags.append((f"drop_table {table.name}", "drops the table and every row in it"))

    def drop_column(self, table_name: str, column: sa.Column, **_kw: Any) -> None:
        self.flags.append(
            (f"drop_column {table_name}.{column.name}", "drops the column and its values")
        )

    def add_column(self, table_name: str, column: sa.Column, **_kw: Any) -> None:
        if not column.nullable and column.server_default is None and not column.primary_key:
            self.flags.append(
                (
                    f"not_null {table_name}.{column.name}",
                    "adds a NOT NULL column without a server default: fails on a table "
                    "with rows (add it nullable, fill it, then make it NOT NULL)",
                )
            )

    def alter_column(self, table_name: str, column_name: str, **kw: Any) -> None:
        where = f"{table_name}.{column_name}"
        new_type, old_type = kw.get("type_"), kw.get("existing_type")
        if new_type is not None and (old_type is None or narrows(old_type, new_type)):
            self.flags.append((f"narrow_type {where}", describe_narrowing(old_type, new_type)))
        if kw.get("nullable") is False and not self.filled(kw):
            self.flags.append(
                (
                    f"not_null {where}",
                    "makes the column NOT NULL with no server default and no data step "
                    "(op.execute) before it to fill existing NULLs",
                )
            )

    def filled(self, kw: dict) -> bool:
        server_default = kw.get("server_default", False)
        if server_default is False:  # unchanged: the existing one, if any, stays
            server_default = kw.get("existing_server_default")
        return server_default not in (None, False) or self.data_steps > 0

    def execute(self, sql: Any, execution_options: Any = None) -> None:
        self.data_steps += 1

    def bulk_insert(self, table: Any, rows: Any, multiinsert: bool = True) -> None:
        self.data_steps += 1

    def _exec(self, construct: Any, *args: Any, **kw: Any) -> None:
        """Every other operation (create table, indexes, ...) is harmless here."""
        return None


def narrows(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> bool:
    """Whether some value of type `old` may not fit type `new`."""
    old, new = generic_type(old), generic_type(new)
    if isinstance(new, sa.String) and not isinstance(new, sa.Enum):
        if not isinstance(old, sa.String):
            return False  # anything can be written as text
        return new.length is not None and (old.length is None or new.length < old.length)
    if isinstance(old, sa.Integer) and isinstance(new, sa.Integer):
        return integer_width(new) < integer_width(old)
    if isinstance(old, sa.Integer) and isinstance(new, sa.Numeric | sa.Float):
        return False
    if isinstance(old, sa.Numeric) and type(old) is type(new):
        return shrinks(old.precision, new.precision) or shrinks(old.scale, new.scale)
    return type(old) is not type(new)


def integer_width(column_type: sa.Integer) -> int:
    for kind in (sa.BigInteger, sa.SmallInteger, sa.Integer):
        if isinstance(column_type, kind):
            return INTEGER_WIDTHS[kind]
    return INTEGER_WIDTHS[sa.Integer]


def shrinks(old: int | None, new: int | None) -> bool:
    return new is not None and (old is None or new < old)


def describe_narrowing(old: Any, new: Any) -> str:
    if old is None:
        return f"changes the type to {new!r} without stating the old one (existing_type)"
    return f"changes the type from {old!r} to {new!r}, which may not hold every old value"


def destructive_operations(script: Script) -> list[tuple[str, str]]:
    """(key, problem) for each flagged operation of the revision's upgrade()."""
    context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True})
    recording = RecordingImpl(context)
    context.impl = recording
    with Operations.context(context):
        script.module.upgrade()
    return recording.flags


def lint_revision(script: Script) -> list[Finding]:
    acknowledged: dict[str, str] = getattr(script.module, ACKNOWLEDGEMENTS, {})
    findings = []

    def found(key: str, problem: str) -> None:
        findings.append(Finding(script.revision, script.path, key, problem))

    flagged = destructive_operations(script)
    for key, problem in flagged:
        if not str(acknowledged.get(key, "")).strip():
            found(key, f"{problem}; if intended, acknowledge it in {ACKNOWLEDGEMENTS}")
    for key in sorted(set(acknowledged) - {key for key, _ in flagged}):
        found(key, f"acknowledged in {ACKNOWLEDGEMENTS} but the revision does not do it")
    return findings


def lint_revisions(script_directory: ScriptDirectory) -> list[Finding]:
    """Findings for every revision, oldest first (released ones included)."""
    revisions = reversed(list(script_directory.walk_revisions()))
    return [finding for script in revisions for finding in lint_revision(script)]


def main(report: Callable[[str], None] = print) -> int:
    from app.migration.revisions import script_directory

    findings = lint_revisions(script_directory())
    for finding in findings:
        report(str(finding))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
