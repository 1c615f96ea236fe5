"""Autogenerate hooks that make `alembic revision --autogenerate` right for SQLModel.

* SQLModel's column types (`AutoString`, `UTCDateTime`) render as the plain
  SQLAlchemy type they wrap, so revisions never import sqlmodel internals.
* A revision with no operations is not written at all.
* A new NOT NULL column with a scalar Python default is added with that value
  as a temporary server default (filling existing rows), then the server
  default is dropped in a second step, so the schema matches the models again.
* A column dropped and another added in the same table, of the same kind of
  type, is written as a rename (`alter_column(new_column_name=...)`) under a
  REVIEW comment, as Django asks "did you rename?": drop + add would lose
  every value.
"""

import logging
import textwrap
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops

log = logging.getLogger(__name__)

NOTE_WIDTH = 72


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    is_sqlmodel_type = isinstance(obj, sa.types.TypeDecorator) and type(obj).__module__.startswith(
        "sqlmodel"
    )
    if type_ == "type" and is_sqlmodel_type:
        return f"sa.{obj.impl!r}"
    return False


def process_revision_directives(context, revision, directives: list) -> None:
    script = directives[0]
    if not getattr(context.config.cmd_opts, "autogenerate", False):
        return
    if script.upgrade_ops.is_empty():
        directives[:] = []
        log.info("No schema changes detected; no revision written")
        return
    write_renames(script.upgrade_ops, script.downgrade_ops)
    script.upgrade_ops.ops = fill_new_required_columns(script.upgrade_ops.ops)


def scalar_default(column: sa.Column) -> Any | None:
    default = column.default
    if column.nullable or column.server_default is not None or default is None:
        return None
    if not getattr(default, "is_scalar", False) or default.arg is None:
        return None
    return default.arg


def as_server_default(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def fill_new_required_columns(table_ops: list) -> list:
    """Give each new NOT NULL column with a scalar default a fill-then-drop server default."""
    result = []
    for table_op in table_ops:
        result.append(table_op)
        if not isinstance(table_op, ops.ModifyTableOps):
            continue
        drops = []
        for index, op in enumerate(table_op.ops):
            if not isinstance(op, ops.AddColumnOp):
                continue
            value = scalar_default(op.column)
            if value is None:
                continue
            column = op.column._copy()
            column.server_default = sa.DefaultClause(as_server_default(value))
            table_op.ops[index] = ops.AddColumnOp(op.table_name, column, schema=op.schema)
            drops.append(
                ops.AlterColumnOp(
                    op.table_name,
                    column.name,
                    schema=op.schema,
                    existing_type=column.type,
                    existing_nullable=False,
                    existing_server_default=column.server_default,
                    modify_server_default=None,
                )
            )
        if drops:
            result.append(ops.ModifyTableOps(table_op.table_name, drops, schema=table_op.schema))
    return result


class ReviewNote(ops.MigrateOperation):
    """A comment written into the revision for the developer to read and delete."""

    def __init__(self, text: str) -> None:
        self.text = text

    def reverse(self) -> "ReviewNote":
        return self


@renderers.dispatch_for(ReviewNote)
def render_review_note(_autogen_context: AutogenContext, note: ReviewNote) -> str:
    return "\n".join(f"# {line}" for line in textwrap.wrap(note.text, NOTE_WIDTH))


def compatible_types(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> bool:
    return type(generic_type(old)) is type(generic_type(new))


def generic_type(column_type: sa.types.TypeEngine) -> sa.types.TypeEngine:
    if isinstance(column_type, sa.types.TypeDecorator):
        column_type = column_type.impl_instance
    try:
        return column_type.as_generic()
    except NotImplementedError:
        return column_type


def rename_op(table_op: ops.ModifyTableOps, old: sa.Column, new: sa.Column) -> ops.AlterColumnOp:
    return ops.AlterColumnOp(
        table_op.table_name,
        old.name,
        schema=table_op.schema,
        modify_name=new.name,
        existing_type=old.type,
        existing_nullable=old.nullable,
        modify_nullable=None if old.nullable == new.nullable else new.nullable,
    )


def likely_rename(table_op: Any) -> tuple[ops.DropColumnOp, ops.AddColumnOp] | None:
    """The one dropped and one added column of a table, when their types are compatible."""
    if not isinstance(table_op, ops.ModifyTableOps):
        return None
    drops = [op for op in table_op.ops if isinstance(op, ops.DropColumnOp)]
    adds = [op for op in table_op.ops if isinstance(op, ops.AddColumnOp)]
    if len(drops) != 1 or len(adds) != 1:
        return None
    if not compatible_types(drops[0].to_column().type, adds[0].column.type):
        return None
    return drops[0], adds[0]


def write_renames(upgrade_ops: ops.UpgradeOps, downgrade_ops: ops.DowngradeOps) -> None:
    """Turn each likely rename into alter_column(new_column_name=...) with a review note.

    Autogenerate cannot tell a renamed field from a dropped one and a new one;
    written as drop + add, the upgrade would lose every value of the column.
    """
    for table_op in upgrade_ops.ops:
        pair = likely_rename(table_op)
        if pair is None:
            continue
        drop, add = pair
        old, new = drop.to_column(), add.column
        note = ReviewNote(
            f"REVIEW: {table_op.table_name}.{old.name} was dropped and {new.name} added: "
            f"written as a rename that keeps the values. The previous release still "
            f"reads {old.name}: acknowledge the rename with the release that stops reading "
            f"it, or expand now and contract later. If {new.name} is really a new column, "
            f"replace this by drop_column({old.name!r}) and add_column, and acknowledge the "
            "drop (see docs/migrations.md)."
        )
        replace_ops(table_op, [drop, add], [note, rename_op(table_op, old, new)])
        for reverse_op in downgrade_ops.ops:
            if getattr(reverse_op, "table_name", None) == table_op.table_name:
                undone = [
                    op
                    for op in reverse_op.ops
                    if (isinstance(op, ops.AddColumnOp) and op.column.name == old.name)
                    or (isinstance(op, ops.DropColumnOp) and op.column_name == new.name)
                ]
                replace_ops(reverse_op, undone, [rename_op(reverse_op, new, old)])
        log.warning(
            "Written as a rename, to review: %s.%s -> %s", table_op.table_name, old.name, new.name
        )


def replace_ops(table_op: ops.ModifyTableOps, removed: list, added: list) -> None:
    """Put `added` where the first of `removed` was, and drop the rest of `removed`."""
    position = min(table_op.ops.index(op) for op in removed)
    kept = [op for op in table_op.ops if all(op is not gone for gone in removed)]
    table_op.ops = kept[:position] + added + kept[position:]
