"""A lint for revisions that can lose data or lock a busy PostgreSQL table, run
by a test in the suite, by `python -m app.migration.authoring.lint`, and by
alembic.ini's post-write hook on every revision `alembic revision` writes.

Each revision's `upgrade()` is run against a recording stand-in for Alembic's
DDL implementation (offline, PostgreSQL dialect, nothing executed), which sees
every operation, batch blocks and autocommit blocks included, and keeps the
SQL each one renders, `op.execute` included. squawk
(app/migration/authoring/squawk.py) and the statement rules
(app/migration/authoring/lock_rules.py, which list their own keys) read that
SQL; their findings are lock hazards unless keyed like a data loss below.

Data loss, acknowledged in `acknowledged_data_loss`:

* `drop_table <table>` and `drop_column <table>.<column>`: the rows or values
  go, and the previous release, still serving during a rolling upgrade, may
  read them (expand now, contract in a later release);
* `narrow_type <table>.<column>`: a type change that may not hold every old
  value (shorter string, smaller integer, another kind of type, or a change
  whose old type the revision does not state);
* `not_null <table>.<column>`: a NOT NULL column added without a server
  default to a table that may hold rows (it fails on every such table, so no
  acknowledgement is accepted for it: add it nullable, fill it in a revision
  of its own, make it NOT NULL in a later release, or give it a server
  default), or a column made
  NOT NULL with no server default and no data step (`op.execute`) before it in
  the revision.

PostgreSQL lock hazards on a table the revision did not create itself,
acknowledged in `acknowledged_lock_hazards`:

* `index_not_concurrent <table>.<index>`: an index built without CONCURRENTLY,
  or with it outside an autocommit block (`outside_transaction()` of
  app.migration.patterns);
* `set_not_null <table>.<column>`: SET NOT NULL without a validated
  `CHECK (<column> IS NOT NULL)` added NOT VALID earlier in the revision
  (`op.create_check_constraint(..., postgresql_not_valid=True)` or that
  `ALTER TABLE` in `op.execute`, then `VALIDATE CONSTRAINT` in `op.execute`;
  validating it in the transaction that added it is lock_rules.py's
  `validate_in_transaction`);
* `validated_constraint <table>.<constraint>`: a foreign key or check added
  without NOT VALID, or a unique or primary key constraint added directly;
* `rewriting_type <table>.<column>`: a type change PostgreSQL does by rewriting
  the table;
* `rename_table <table>` and `rename_column <table>.<column>`: the previous
  release, still serving, reads the old name.

A revision acknowledges a flagged operation in the dict its kind belongs to,
keyed exactly as the lint reports, each value saying why it is safe:

    acknowledged_data_loss = {
        "drop_column job.note": "no release reads note since 0.3.0",
    }

The reason for a drop or a rename must name the release that stopped reading
the old table or column (a version such as 0.3.0). An acknowledgement for an
operation the revision does not perform is flagged too, so the lists stay
true. Downgrades are not linted: undoing a revision drops what it added by
design, and a SQLite downgrade is backed up first.
"""

import argparse
import io
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.ddl.impl import DefaultImpl
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql

from app.migration.authoring.autogenerate import generic_type
from app.migration.authoring.lock_rules import statement_hazards
from app.migration.authoring.squawk import SquawkMissing
from app.migration.authoring.statements import Statement, split_sql
from app.migration.errors import RevisionFileError
from app.migration.revisions import script_directory

DATA_LOSS = "acknowledged_data_loss"
LOCK_HAZARDS = "acknowledged_lock_hazards"
ACKNOWLEDGED_IN = {
    "drop_table": DATA_LOSS,
    "drop_column": DATA_LOSS,
    "narrow_type": DATA_LOSS,
    "not_null": DATA_LOSS,
    "index_not_concurrent": LOCK_HAZARDS,
    "set_not_null": LOCK_HAZARDS,
    "validated_constraint": LOCK_HAZARDS,
    "rewriting_type": LOCK_HAZARDS,
    "rename_table": LOCK_HAZARDS,
    "rename_column": LOCK_HAZARDS,
}
CONTRACTS = {"drop_table", "drop_column", "rename_table", "rename_column"}
RELEASE = re.compile(r"\b\d+\.\d+(\.\d+)?\b")
INTEGER_WIDTHS = {sa.SmallInteger: 1, sa.Integer: 2, sa.BigInteger: 3}
POSTGRESQL = postgresql.dialect()
VALIDATE_CONSTRAINT = re.compile(r"\bVALIDATE\s+CONSTRAINT\s+\"?(\w+)\"?", re.IGNORECASE)
NOT_VALID_NOT_NULL_CHECK = re.compile(
    r"ALTER\s+TABLE\s+(?:ONLY\s+)?\"?(\w+)\"?\s+ADD\s+CONSTRAINT\s+\"?(\w+)\"?\s+"
    r"CHECK\s*\(\s*\"?(\w+)\"?\s+IS\s+NOT\s+NULL\s*\)\s+NOT\s+VALID",
    re.IGNORECASE,
)
IS_NOT_NULL = re.compile(r"^\(?\s*\"?(\w+)\"?\s+IS\s+NOT\s+NULL\s*\)?$", re.IGNORECASE)
SIZED_TYPE = re.compile(r"^([A-Z ]+?)\s*(?:\((\d+)(?:,\s*(\d+))?\))?$")
STRING_TYPES = {"VARCHAR", "TEXT"}
UNBOUNDED_WITHOUT_REWRITE = {(old, new) for old in STRING_TYPES for new in STRING_TYPES} | {
    ("NUMERIC", "NUMERIC")
}
CONCURRENT_INDEX = (
    "write it inside `with outside_transaction() as concurrently:` (app.migration.patterns) "
    "as op.create_index(..., postgresql_concurrently=concurrently, if_not_exists=True)"
)
VALIDATE_LATER = (
    "add it with postgresql_not_valid=True after op.execute('ALTER TABLE ... DROP CONSTRAINT "
    "IF EXISTS ...') (so a run after a failed one gets past it), then run "
    "op.execute('ALTER TABLE ... VALIDATE CONSTRAINT ...') inside `with "
    "outside_transaction():` (app.migration.patterns), where it blocks neither reads nor "
    "writes; not in the transaction that added it, whose lock would stay held while it checks"
)
NOT_NULL_COLUMN_ADDED = (
    "adds a NOT NULL column without a server default, which fails on every table with rows; "
    "add it nullable, fill it in a revision of its own (fill_in_batches), then set NOT NULL "
    'in a later release, or give it a server default (docs/migrations.md, "A new NOT NULL '
    'column")'
)
EXPAND_CONTRACT = (
    "the previous release, still serving during a rolling upgrade, may read it: expand now, "
    "contract in a later release"
)


@dataclass(frozen=True)
class Flag:
    """One flagged operation: `kind` names the rule, `key` is what an acknowledgement names."""

    kind: str
    subject: str
    problem: str
    acknowledgeable: bool = True

    @property
    def key(self) -> str:
        return f"{self.kind} {self.subject}"


@dataclass(frozen=True)
class Finding:
    revision: str
    path: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.problem}"


class RecordingImpl(DefaultImpl):
    """Alembic's DDL implementation, with what may lose data or lock a table recorded."""

    def __init__(self, context: MigrationContext) -> None:
        super().__init__(context.dialect, None, True, True, io.StringIO(), context.opts)
        self.flags: list[Flag] = []
        self.data_steps = 0
        self.created_tables: set[str] = set()
        self.in_autocommit_block = False
        self.not_null_checks: dict[str, tuple[str, str]] = {}
        self.validated_constraints: set[str] = set()
        self.statements: list[Statement] = []
        self.segment = 0
        self.rendering_raw_sql = False
        self.rendering_type_kept_in_place = False

    def flag(self, kind: str, subject: str, problem: str, acknowledgeable: bool = True) -> None:
        self.flags.append(Flag(kind, subject, problem, acknowledgeable))

    def existed_before(self, table_name: str) -> bool:
        """Whether the table may hold rows: the revision did not create it itself."""
        return table_name not in self.created_tables

    def create_table(self, table: sa.Table, **kw: Any) -> None:
        self.created_tables.add(table.name)
        super().create_table(table, **kw)

    def drop_table(self, table: sa.Table, **kw: Any) -> None:
        self.flag(
            "drop_table", table.name, f"drops the table and every row in it; {EXPAND_CONTRACT}"
        )
        super().drop_table(table, **kw)

    def drop_column(self, table_name: str, column: sa.Column, **kw: Any) -> None:
        self.flag(
            "drop_column",
            f"{table_name}.{column.name}",
            f"drops the column and its values; {EXPAND_CONTRACT}",
        )
        super().drop_column(table_name, column, **kw)

    def rename_table(self, old_table_name: str, new_table_name: str, **kw: Any) -> None:
        super().rename_table(old_table_name, new_table_name, **kw)
        if not self.existed_before(old_table_name):
            self.created_tables.add(new_table_name)
            return
        self.flag(
            "rename_table",
            old_table_name,
            f"renames the table to {new_table_name}; {EXPAND_CONTRACT} (create the new "
            "table, write both, copy, and drop the old one once no release reads it)",
        )

    def add_column(self, table_name: str, column: sa.Column, **kw: Any) -> None:
        super().add_column(table_name, column, **kw)
        no_default = column.server_default is None and not column.primary_key
        if not column.nullable and no_default and self.existed_before(table_name):
            self.flag(
                "not_null",
                f"{table_name}.{column.name}",
                NOT_NULL_COLUMN_ADDED,
                acknowledgeable=False,
            )

    def alter_column(self, table_name: str, column_name: str, **kw: Any) -> None:
        new_type, old_type = kw.get("type_"), kw.get("existing_type")
        self.rendering_type_kept_in_place = (
            new_type is not None and old_type is not None and not rewrites_table(old_type, new_type)
        )
        super().alter_column(table_name, column_name, **kw)
        self.rendering_type_kept_in_place = False
        where = f"{table_name}.{column_name}"
        if new_type is not None and (old_type is None or narrows(old_type, new_type)):
            self.flag("narrow_type", where, describe_narrowing(old_type, new_type))
        if kw.get("nullable") is False and not self.filled(table_name, kw):
            self.flag(
                "not_null",
                where,
                "makes the column NOT NULL with no server default and no data step "
                "(op.execute) before it to fill existing NULLs",
            )
        if self.existed_before(table_name):
            self.lock_hazards_of_alter(table_name, column_name, kw)

    def lock_hazards_of_alter(self, table_name: str, column_name: str, kw: dict) -> None:
        where = f"{table_name}.{column_name}"
        new_type, old_type = kw.get("type_"), kw.get("existing_type")
        if new_type is not None and old_type is not None and rewrites_table(old_type, new_type):
            self.flag(
                "rewriting_type",
                where,
                f"changes the type from {compiled(old_type)} to {compiled(new_type)}, which "
                "PostgreSQL does by rewriting the table under an ACCESS EXCLUSIVE lock; "
                "instead add a column of the new type, backfill it in batches, move the "
                "code to it, and drop the old column in a later release",
            )
        if kw.get("nullable") is False and not self.proven_not_null(table_name, column_name):
            self.flag(
                "set_not_null",
                where,
                "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock; first "
                "drop the check if a failed run left it (op.execute('ALTER TABLE ... DROP "
                f"CONSTRAINT IF EXISTS ...')) and add CHECK ({column_name} IS NOT NULL) with "
                "op.create_check_constraint(..., postgresql_not_valid=True), then, inside "
                "`with outside_transaction():` "
                "(app.migration.patterns), op.execute('ALTER TABLE ... VALIDATE CONSTRAINT "
                "...'), SET NOT NULL (it then skips the scan) and drop the check",
            )
        if kw.get("name") is not None:
            self.flag(
                "rename_column",
                where,
                f"renames the column to {kw['name']}; {EXPAND_CONTRACT} (add the new "
                "column, write both, backfill, and drop the old one once no release reads it)",
            )

    def proven_not_null(self, table_name: str, column_name: str) -> bool:
        """Whether a validated CHECK (column IS NOT NULL) lets SET NOT NULL skip its scan."""
        return any(
            self.not_null_checks.get(name) == (table_name, column_name)
            for name in self.validated_constraints
        )

    def filled(self, table_name: str, kw: dict) -> bool:
        """Whether no NULL can be left: a server default, a data step, or a table this
        revision created."""
        server_default = kw.get("server_default", False)
        if server_default is False:  # unchanged: the existing one, if any, stays
            server_default = kw.get("existing_server_default")
        has_default = server_default not in (None, False)
        return has_default or self.data_steps > 0 or not self.existed_before(table_name)

    def create_index(self, index: sa.Index, **kw: Any) -> None:
        super().create_index(index, **kw)
        table_name = index.table.name
        if not self.existed_before(table_name):
            return
        where = f"{table_name}.{index.name}"
        if not index.dialect_options["postgresql"]["concurrently"]:
            self.flag(
                "index_not_concurrent",
                where,
                "builds the index without CONCURRENTLY, blocking every write to the table "
                f"until it is done; {CONCURRENT_INDEX}",
            )
        elif not self.in_autocommit_block:
            self.flag(
                "index_not_concurrent",
                where,
                f"CREATE INDEX CONCURRENTLY cannot run inside a transaction; {CONCURRENT_INDEX}",
            )

    def add_constraint(self, const: Any, **kw: Any) -> None:
        super().add_constraint(const, **kw)
        table_name = const.table.name
        if isinstance(const, sa.CheckConstraint):
            self.remember_not_null_check(table_name, const)
        if not self.existed_before(table_name):
            return
        where = f"{table_name}.{const.name}"
        if isinstance(const, sa.UniqueConstraint | sa.PrimaryKeyConstraint):
            self.flag(
                "validated_constraint",
                where,
                "builds the constraint's index under an ACCESS EXCLUSIVE lock, which blocks "
                f"reads and writes; build a unique index concurrently ({CONCURRENT_INDEX}), "
                "then op.execute('ALTER TABLE ... ADD CONSTRAINT ... USING INDEX ...')",
            )
        elif not const.dialect_options["postgresql"]["not_valid"]:
            self.flag(
                "validated_constraint",
                where,
                "checks every existing row while holding a lock that blocks writes (a check "
                f"blocks reads too); {VALIDATE_LATER}",
            )

    def remember_not_null_check(self, table_name: str, check: sa.CheckConstraint) -> None:
        match = IS_NOT_NULL.match(str(check.sqltext).strip())
        if match and check.name is not None:
            self.not_null_checks[str(check.name)] = (table_name, match.group(1))

    def execute(self, sql: Any, execution_options: Any = None) -> None:
        self.data_steps += 1
        self.rendering_raw_sql = isinstance(sql, str | sa.TextClause)
        super().execute(sql, execution_options)
        self.rendering_raw_sql = False
        text = sql if isinstance(sql, str) else getattr(sql, "text", "")
        self.validated_constraints.update(VALIDATE_CONSTRAINT.findall(text))
        for table_name, name, column_name in NOT_VALID_NOT_NULL_CHECK.findall(text):
            self.not_null_checks[name] = (table_name, column_name)

    def bulk_insert(self, table: Any, rows: Any, multiinsert: bool = True) -> None:
        self.data_steps += 1

    def emit_commit(self) -> None:
        """Offline, an autocommit block starts with COMMIT (and ends with BEGIN)."""
        self.in_autocommit_block = True
        self.segment += 1

    def emit_begin(self) -> None:
        self.in_autocommit_block = False
        self.segment += 1

    def static_output(self, text: str) -> None:
        """Each statement rendered offline, kept for squawk and the statement rules."""
        self.statements.extend(
            Statement(
                sql,
                self.rendering_raw_sql,
                self.in_autocommit_block,
                self.segment,
                self.rendering_type_kept_in_place,
            )
            for sql in split_sql(text)
        )


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


def compiled(column_type: sa.types.TypeEngine) -> str:
    """The type as PostgreSQL's DDL spells it, e.g. `VARCHAR(20)`; its repr if it has none."""
    try:
        return column_type.compile(dialect=POSTGRESQL)
    except sa.exc.CompileError:
        return repr(column_type)


def rewrites_table(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> bool:
    """Whether PostgreSQL rewrites the table to change a column from `old` to `new`.

    Only a few changes keep the stored bytes and skip the rewrite: a varchar
    made longer or unbounded, varchar to text, and a numeric given more
    precision at the same scale (or none). Everything else rewrites.
    """
    old_name, old_size, old_scale = sized_type(compiled(old))
    new_name, new_size, new_scale = sized_type(compiled(new))
    if (old_name, old_size, old_scale) == (new_name, new_size, new_scale):
        return False
    if new_size is None and (old_name, new_name) in UNBOUNDED_WITHOUT_REWRITE:
        return False
    if old_size is None or new_size is None:
        return True
    if old_name in STRING_TYPES and new_name in STRING_TYPES:
        return new_size < old_size
    return not (old_name == new_name == "NUMERIC" and old_scale == new_scale) or new_size < old_size


def sized_type(ddl: str) -> tuple[str, int | None, int | None]:
    """`VARCHAR(20)` -> ("VARCHAR", 20, None); a type this cannot read stays whole."""
    match = SIZED_TYPE.match(ddl.upper())
    if match is None:
        return ddl.upper(), None, None
    name, size, scale = match.groups()
    return name, int(size) if size else None, int(scale) if scale else None


def recorded_upgrade(script: Script) -> RecordingImpl:
    """The revision's upgrade() run offline for PostgreSQL: its flags and statements."""
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "literal_binds": True}
    )
    recording = RecordingImpl(context)
    context.impl = recording
    with Operations.context(context):
        script.module.upgrade()
    return recording


def flagged_operations(recording: RecordingImpl) -> list[Flag]:
    """The operations the recording flagged, then what squawk and the statement rules
    find in its SQL that it did not."""
    flags = list(recording.flags)
    keys = {flag.key for flag in flags}
    for hazard in statement_hazards(
        recording.statements, recording.created_tables, judged=set(ACKNOWLEDGED_IN)
    ):
        flag = Flag(*hazard)
        if flag.key not in keys:
            flags.append(flag)
            keys.add(flag.key)
    return flags


def acknowledged_in(kind: str) -> str:
    """The dict that acknowledges a kind: squawk's and the statement rules' kinds are lock
    hazards unless keyed like one of ACKNOWLEDGED_IN's."""
    return ACKNOWLEDGED_IN.get(kind, LOCK_HAZARDS)


def lint_revision(script: Script) -> list[Finding]:
    findings = []

    def found(key: str, problem: str) -> None:
        findings.append(Finding(script.revision, script.path, key, problem))

    try:
        recording = recorded_upgrade(script)
    except Exception as exc:
        found(
            "offline",
            f"upgrade() cannot be read offline ({type(exc).__name__}: {exc}); the lint runs it "
            "without a database: read rows with op.execute(...) statements rather than "
            "op.get_bind(), or branch on op.get_context().as_sql",
        )
        return findings
    flags = flagged_operations(recording)
    for flag in flags:
        where = acknowledged_in(flag.kind)
        acknowledged = getattr(script.module, where, {})
        reason = str(acknowledged.get(flag.key, "")).strip()
        naming = ", naming the release that stopped reading it" if flag.kind in CONTRACTS else ""
        if not flag.acknowledgeable:
            refused = f"cannot be acknowledged in {where}: " if flag.key in acknowledged else ""
            found(flag.key, f"{refused}{flag.problem}")
        elif not reason:
            found(flag.key, f"{flag.problem}; if intended, acknowledge it in {where}{naming}")
        elif naming and not RELEASE.search(reason):
            found(
                flag.key,
                f"its acknowledgement in {where} must name the release that stopped reading "
                "it (a version such as 0.4.0)",
            )
    for where in sorted(set(ACKNOWLEDGED_IN.values())):
        done = {flag.key for flag in flags if acknowledged_in(flag.kind) == where}
        for key in sorted(set(getattr(script.module, where, {})) - done):
            found(key, f"acknowledged in {where} but the revision does not do it")
    return findings


def lint_revisions(script_directory: ScriptDirectory) -> list[Finding]:
    """Findings for every revision, oldest first (released ones included)."""
    revisions = reversed(list(script_directory.walk_revisions()))
    return [finding for script in revisions for finding in lint_revision(script)]


def revision_at(path: Path) -> Script:
    """The revision whose file is `path`, read from the versions folder it sits in."""
    migrations_dir = path.resolve().parents[1]
    for script in script_directory(migrations_dir).walk_revisions():
        if Path(script.path).resolve() == path.resolve():
            return script
    raise LookupError(f"{path} is not a revision file of {migrations_dir}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m app.migration.authoring.lint",
        description="Flag revisions that lose data or lock a busy PostgreSQL table; exit 1 "
        "when any revision is flagged.",
    )
    commands = parser.add_subparsers(dest="command")
    hook = commands.add_parser(
        "hook", help="alembic's post-write hook: print this revision's findings, always exit 0"
    )
    hook.add_argument("revision_file", type=Path)
    return parser.parse_args(argv)


def main(argv: Sequence[str] = (), report: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    if args.command == "hook":
        return report_new_revision(args.revision_file, report)
    try:
        findings = lint_revisions(script_directory())
    except (SquawkMissing, RevisionFileError) as exc:
        report(f"lint: error: {exc}")
        return 2
    for finding in findings:
        report(str(finding))
    return 1 if findings else 0


def report_new_revision(path: Path, report: Callable[[str], None]) -> int:
    """Warn about a revision just written; CI's lint test is what fails on it."""
    try:
        findings = lint_revision(revision_at(path))
    except (LookupError, CommandError, SquawkMissing) as exc:
        report(f"lint: error: {exc}")
        return 1
    for finding in findings:
        report(f"lint: {finding}")
    if findings:
        report(
            f"lint: {len(findings)} finding(s) in {path.name}: change the revision, or "
            "acknowledge those that say so (docs/migrations.md); the test suite fails until then"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
