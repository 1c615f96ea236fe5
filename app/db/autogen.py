"""Autogenerate hooks that make `alembic revision --autogenerate` right for SQLModel.

* SQLModel's column types (`AutoString`, `UTCDateTime`) render as the plain
  SQLAlchemy type they wrap, so revisions never import sqlmodel internals.
* A revision with no operations is not written at all.
* A new NOT NULL column with a scalar Python default is added with that value
  as a temporary server default (filling existing rows), then the server
  default is dropped in a second step, so the schema matches the models again.
"""

import logging
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops

from app.db.history import is_migration_table

log = logging.getLogger(__name__)

COMPARE_OPTIONS = {
    "compare_type": True,
    "compare_server_default": True,
    "include_name": is_migration_table,
}
"""How autogenerate, `alembic check` and `anibridge status` compare the database with the models."""


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
