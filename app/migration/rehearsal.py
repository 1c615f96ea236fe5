"""Watch one real upgrade run statement by statement (`anibridge plan`).

The run is the upgrade itself: env.py, the protections and the revisions, on a
connection `app.migration.plan` hands in, to a scratch copy of the database
(the copy is what is thrown away: the run commits as the upgrade does,
autocommit blocks included). A `Rehearsal` only looks, through SQLAlchemy's
public connection events and the run's `StepClock`:

* before a statement that can change the rows of a table that existed when
  the step began (INSERT, UPDATE, DELETE, REPLACE, MERGE, TRUNCATE, ALTER
  TABLE, DROP TABLE, and `WITH` ones), each such table it names is copied
  into a temporary table, once per step: the table as the step found it;
* at the end of each step every table is counted, and the copies are
  compared with what the step left: rows before and after, rows changed
  (docs/plan.md: a kept column's value changed, or an added column holds a
  value), and whether the table's storage was replaced, which is a rebuild
  (SQLite's root page, PostgreSQL's relfilenode);
* each statement's time, identical statements grouped with their count;
* on PostgreSQL, after every statement, the table locks the transaction
  holds: each is held until that transaction commits or rolls back.

What the watching itself costs (copies, lock queries) is taken out of the
step times and lock times it reports.
"""

import functools
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, event

from app.migration.adoption.schema_shape import IGNORED_TABLES

SNAPSHOT_PREFIX = "anibridge_plan_"
ROW_CHANGING = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "TRUNCATE", "ALTER", "DROP", "WITH"}
)
NOT_LISTED = frozenset(
    {"SELECT", "PRAGMA", "SHOW", "EXPLAIN", "SET", "RESET"}
    | {"BEGIN", "COMMIT", "END", "SAVEPOINT", "RELEASE", "ROLLBACK"}
)
"""Statements that read, or only settle the transaction: not listed in a step's SQL."""
SQLITE_AFFINITIES = (("INT", "INTEGER"), ("CHAR", "TEXT"), ("CLOB", "TEXT"), ("TEXT", "TEXT"))


class RehearsalBroken(BaseException):
    """Watching the run failed (a bug, or a query of ours the database refused).

    Not an Exception, so the run cannot report it as the upgrade's own failure.
    """


def watching(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any failure of `handler` into RehearsalBroken."""

    @functools.wraps(handler)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            raise RehearsalBroken(f"{type(exc).__name__}: {exc}") from exc

    return guarded


@dataclass
class TableChange:
    table: str
    rows_before: int | None
    rows_after: int | None
    rows_changed: int | None
    rebuilt: bool
    columns_added: list[str] = field(default_factory=list)
    columns_dropped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LockHeld:
    table: str
    mode: str
    held_s: float


@dataclass
class StatementRun:
    """One distinct statement of a step: how often it ran and its time in all."""

    sql: str
    count: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"sql": self.sql, "count": self.count, "seconds": round(self.seconds, 6)}


@dataclass
class StepReport:
    kind: str
    revision: str
    message: str
    seconds: float
    schema: str | None = None
    statements: list[StatementRun] = field(default_factory=list)
    tables: list[TableChange] = field(default_factory=list)
    locks: list[LockHeld] = field(default_factory=list)

    @property
    def rebuilt(self) -> list[str]:
        return [change.table for change in self.tables if change.rebuilt]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "revision": self.revision,
            "message": self.message,
            "seconds": round(self.seconds, 6),
            "schema": self.schema,
            "statements": [statement.as_dict() for statement in self.statements],
            "rebuilt": self.rebuilt,
            "tables": [change.as_dict() for change in self.tables],
            "locks": [asdict(lock) for lock in self.locks],
        }


@dataclass(frozen=True)
class TableState:
    rows: int
    storage: int


@dataclass(frozen=True)
class Snapshot:
    """A temporary copy of a table as its step found it."""

    name: str
    columns: dict[str, str]
    key: tuple[str, ...]
    rows: int
    has_rowid: bool


@dataclass
class StepInProgress:
    statements: dict[str, StatementRun] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    """Tables a statement other than ALTER TABLE named: their rows may have been written."""
    overhead: float = 0.0


@dataclass(frozen=True)
class LockTaken:
    step: int
    at: float


class Rehearsal:
    """Watches a run on `connection`; a listener of its `StepClock` (`step_listeners`)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.driver = connection.connection.driver_connection
        self.engine = connection.dialect.name
        self.quote = connection.dialect.identifier_preparer.quote
        self.schema = self.query("SELECT current_schema()")[0][0] if self.is_postgres else "main"
        self.snapshot_count = 0
        self.begin_attempt()

    def begin_attempt(self) -> None:
        """Forget what an attempt the run rolled back did (it retries after a lock_timeout)."""
        self.started = time.monotonic()
        self.overhead = 0.0
        self.steps: list[StepReport] = []
        self.step = StepInProgress()
        self.states = self.table_states()
        self.tables_at_start = set(self.states)
        self.locks_open: dict[tuple[str, str], LockTaken] = {}
        self.locks_released: list[tuple[tuple[str, str], LockTaken, float]] = []
        self.running: tuple[StatementRun, float] | None = None
        self.rolled_back = False

    @property
    def is_postgres(self) -> bool:
        return self.engine == "postgresql"

    def events(self) -> dict[str, Callable[..., Any]]:
        return {
            "before_cursor_execute": self.before_statement,
            "after_cursor_execute": self.after_statement,
            "commit": self.at_commit,
            "rollback": self.at_rollback,
        }

    def watch(self) -> None:
        for name, handler in self.events().items():
            event.listen(self.connection, name, handler)

    def stop_watching(self) -> None:
        for name, handler in self.events().items():
            event.remove(self.connection, name, handler)

    def query(self, sql: str) -> list[tuple]:
        """Run `sql` on the driver's connection, in the run's transaction, unseen by the events."""
        cursor = self.driver.cursor()
        try:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []
        finally:
            cursor.close()

    def run_time(self) -> float:
        """Seconds since the run began, without what watching it cost."""
        return time.monotonic() - self.started - self.overhead

    # The connection events

    @watching
    def before_statement(self, _conn, _cursor, statement: str, *_args) -> None:
        kind = first_keyword(statement)
        if kind in NOT_LISTED or kind == "":
            return
        self.measure_afresh_after_rollback()
        began = time.monotonic()
        text = one_line(statement)
        run = self.step.statements.setdefault(text, StatementRun(text))
        if kind in ROW_CHANGING:
            named = self.existing_tables_named(statement)
            for table in sorted(named - IGNORED_TABLES - self.step.snapshots.keys()):
                if self.table_exists(table):
                    self.step.snapshots[table] = self.snapshot(table)
            if kind != "ALTER":
                self.step.written.update(named)
        self.spent(began)
        self.running = (run, time.monotonic())

    @watching
    def after_statement(self, *_args) -> None:
        if self.running is None:
            return
        run, began_statement = self.running
        self.running = None
        run.count += 1
        run.seconds += time.monotonic() - began_statement
        if not self.is_postgres:
            return
        began = time.monotonic()
        at = self.run_time()
        for lock in self.locks_held():
            self.locks_open.setdefault(lock, LockTaken(len(self.steps), at))
        self.spent(began)

    @watching
    def at_commit(self, _conn) -> None:
        """The transaction's locks are released: each was held from its first sighting."""
        self.release_locks()

    def at_rollback(self, _conn) -> None:
        """The run rolled its attempt back: what it did is void (measured afresh, lazily)."""
        self.rolled_back = True

    def measure_afresh_after_rollback(self) -> None:
        """Start over once the next attempt writes or ends a step, not on every read.

        Waiting for the upgrade lock ends a transaction at every try: counting
        every table at each of those would be wasted while the wait goes on.
        """
        if self.rolled_back:
            self.begin_attempt()

    def release_locks(self) -> None:
        end = self.run_time()
        self.locks_released.extend((lock, taken, end) for lock, taken in self.locks_open.items())
        self.locks_open = {}

    def spent(self, began: float) -> None:
        cost = time.monotonic() - began
        self.overhead += cost
        self.step.overhead += cost

    # The StepClock listener

    @watching
    def __call__(self, *, seconds: float, step=None, adoption=None, **_step) -> None:
        self.measure_afresh_after_rollback()
        began = time.monotonic()
        if adoption is not None:
            kind, revision, message = "adopt", adoption.revision, adoption.description
        else:
            kind, revision = "upgrade", step.up_revision_id
            message = (step.up_revision.doc or "").strip() if step.up_revision else ""
        after = self.table_states()
        report = StepReport(kind, revision, message, max(seconds - self.step.overhead, 0.0))
        report.schema = adoption.schema_name if adoption is not None else None
        report.statements = list(self.step.statements.values())
        report.tables = self.table_changes(self.states, after)
        self.steps.append(report)
        self.states, self.step = after, StepInProgress()
        self.overhead += time.monotonic() - began

    def finish(self) -> None:
        """Give each step the locks it took, each held until its transaction ended."""
        self.release_locks()
        for (table, mode), taken, end in sorted(self.locks_released, key=lock_order):
            if taken.step < len(self.steps):
                held = round(end - taken.at, 6)
                self.steps[taken.step].locks.append(LockHeld(table, mode, held))

    # Tables

    def table_states(self) -> dict[str, TableState]:
        if self.is_postgres:
            rows = self.query(
                "SELECT c.relname, c.relfilenode FROM pg_class c "
                f"WHERE c.relnamespace = {literal(self.schema)}::regnamespace "
                "AND c.relkind IN ('r', 'p')"
            )
        else:
            rows = self.query(
                "SELECT name, rootpage FROM main.sqlite_master "
                "WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~'"
            )
        return {
            name: TableState(self.count_rows(self.qualified(name)), storage)
            for name, storage in rows
        }

    def qualified(self, table: str) -> str:
        return f"{self.quote(self.schema)}.{self.quote(table)}"

    def count_rows(self, relation: str) -> int:
        return self.query(f"SELECT count(*) FROM {relation}")[0][0]

    def existing_tables_named(self, statement: str) -> set[str]:
        """The tables the step began with that `statement` names."""
        words = identifiers(statement)
        return {table for table in self.states if table.lower() in words}

    def table_exists(self, table: str) -> bool:
        """Whether `table` is still there (a rebuild drops it before renaming the copy)."""
        return self.relation_exists("main", table)

    def relation_exists(self, sqlite_schema: str, name: str) -> bool:
        if self.is_postgres:
            schema = "pg_temp" if sqlite_schema == "temp" else self.schema
            relation = literal(f"{self.quote(schema)}.{self.quote(name)}")
            return self.query(f"SELECT to_regclass({relation})")[0][0] is not None
        found = self.query(
            f"SELECT 1 FROM {sqlite_schema}.sqlite_master WHERE name = {literal(name)}"
        )
        return bool(found)

    def snapshot(self, table: str) -> Snapshot:
        self.snapshot_count += 1
        name = f"{SNAPSHOT_PREFIX}{self.snapshot_count}"
        columns, key = self.columns_and_key(table)
        has_rowid = False
        if self.is_postgres:
            self.query(f"CREATE TEMPORARY TABLE {name} AS SELECT * FROM {self.qualified(table)}")
        else:
            has_rowid = self.has_rowid(table)
            rowid = "rowid AS anibridge_rowid, " if has_rowid else ""
            self.query(
                f"CREATE TEMPORARY TABLE {name} AS SELECT {rowid}* FROM {self.qualified(table)}"
            )
        return Snapshot(name, columns, key, self.count_rows(self.temporary(name)), has_rowid)

    def temporary(self, name: str) -> str:
        return f"pg_temp.{name}" if self.is_postgres else f"temp.{name}"

    def has_rowid(self, table: str) -> bool:
        columns = {
            row[1].lower() for row in self.query(f"PRAGMA main.table_xinfo({literal(table)})")
        }
        if "rowid" in columns:
            return False
        listed = self.query(
            f"SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = {literal(table)}"
        )
        return not re.search(r"WITHOUT\s+ROWID\s*$", listed[0][0] or "", re.IGNORECASE)

    def columns_and_key(self, table: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """The table's columns with their declared types, and its primary key columns."""
        if self.is_postgres:
            relation = literal(self.qualified(table))
            columns = self.query(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                f"WHERE attrelid = {relation}::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum"
            )
            key = self.query(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                f"WHERE i.indrelid = {relation}::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)"
            )
            return dict(columns), tuple(row[0] for row in key)
        info = self.query(f"PRAGMA main.table_info({literal(table)})")
        key = sorted((row[5], row[1]) for row in info if row[5])
        return {row[1]: row[2] for row in info}, tuple(name for _, name in key)

    def table_changes(
        self, before: dict[str, TableState], after: dict[str, TableState]
    ) -> list[TableChange]:
        changes = []
        for table in sorted((before.keys() | after.keys()) - IGNORED_TABLES):
            old, new = before.get(table), after.get(table)
            if table not in self.step.snapshots and old == new:
                continue
            change = TableChange(
                table,
                old.rows if old else None,
                new.rows if new else None,
                rows_changed=0 if old == new else None,
                rebuilt=old is not None and new is not None and old.storage != new.storage,
            )
            snapshot = self.step.snapshots.get(table)
            if snapshot is not None and new is not None:
                columns, _ = self.columns_and_key(table)
                change.columns_added = [name for name in columns if name not in snapshot.columns]
                change.columns_dropped = [name for name in snapshot.columns if name not in columns]
                change.rows_changed = self.rows_changed_by(table, snapshot, change)
            changes.append(change)
        return changes

    def rows_changed_by(self, table: str, snapshot: Snapshot, change: TableChange) -> int | None:
        """Rows changed; without comparing every row when only ALTER TABLE named the table.

        An ALTER TABLE that keeps the table's storage (adding, dropping or
        renaming a column, a default, a constraint) leaves every kept value as
        it was: what it wrote is in the columns it added. On 1,000,000 jobs,
        one column added, this took the count from 6.7 s to a scan.
        """
        if change.rebuilt or table in self.step.written:
            return self.rows_changed(table, snapshot)
        if not change.columns_added:
            return 0
        condition = " OR ".join(f"{self.quote(name)} IS NOT NULL" for name in change.columns_added)
        return self.query(f"SELECT count(*) FROM {self.qualified(table)} WHERE {condition}")[0][0]

    def snapshot_exists(self, snapshot: Snapshot) -> bool:
        """False when a savepoint the run rolled back took the copy with it."""
        return self.relation_exists("temp", snapshot.name)

    def rows_changed(self, table: str, snapshot: Snapshot) -> int | None:
        """Rows, matched by primary key, changed by the step (docs/plan.md).

        A row is changed when its value changed in a column kept on both sides,
        or when a column the step added holds a value (not NULL) in it: a fill
        writes there. None when no primary key is kept on both sides, or the
        copy is gone.
        """
        if not self.snapshot_exists(snapshot):
            return None
        columns, key = self.columns_and_key(table)
        kept = [name for name in snapshot.columns if name in columns]
        match = next(
            (k for k in (snapshot.key, key) if k and all(name in kept for name in k)), None
        )
        if match is None:
            return None
        compared = [name for name in kept if name not in match]
        added = [name for name in columns if name not in snapshot.columns]
        differs = self.differs(compared, snapshot.columns, columns, added)
        before, after = self.temporary(snapshot.name), self.qualified(table)
        if not self.is_postgres:
            aligned = self.rows_changed_in_place(before, after, snapshot, match, differs)
            if aligned is not None:
                return aligned
        joined = " AND ".join(f"a.{self.quote(k)} = b.{self.quote(k)}" for k in match)
        (count,) = self.query(
            f"SELECT coalesce(sum(CASE WHEN {differs} THEN 1 ELSE 0 END), 0) "
            f"FROM {before} b JOIN {after} a ON {joined}"
        )
        return int(count[0])

    def rows_changed_in_place(
        self, before: str, after: str, snapshot: Snapshot, key: tuple[str, ...], differs: str
    ) -> int | None:
        """SQLite's fast path: rows paired by rowid, used when every pair has the same key.

        A row keeps its rowid through an UPDATE, and a table rebuilt by
        `INSERT ... SELECT` numbers its rows in the old rowid order: either
        pairing is tried, and kept only when it pairs every row with its own key.
        """
        rows_after = self.count_rows(after)
        if rows_after != snapshot.rows:
            return None
        other_key = self.row_value("a", key) + " IS NOT " + self.row_value("b", key)
        pairings = ["b.anibridge_rowid = a.rowid"] if snapshot.has_rowid else []
        for pairing in [*pairings, "b.rowid = a.rowid"]:
            paired, mismatched, changed = self.query(
                f"SELECT count(*), total({other_key}), total({differs}) "
                f"FROM {before} b JOIN {after} a ON {pairing}"
            )[0]
            if paired == snapshot.rows and mismatched == 0:
                return int(changed)
        return None

    def differs(
        self,
        columns: list[str],
        old_types: dict[str, str],
        new_types: dict[str, str],
        added: list[str],
    ) -> str:
        """An SQL condition true when a row's value differs in any of `columns`, or is set in
        any of the `added` ones.

        PostgreSQL compares text forms (json has no `=`, and a changed type
        compares across types); SQLite compares row values (one comparison,
        measured a quarter faster than one per column), and the storage class
        of a column whose type affinity changed.
        """
        terms = [f"a.{self.quote(name)} IS NOT NULL" for name in added]
        if columns and self.is_postgres:
            terms.extend(
                f"a.{self.quote(name)}::text IS DISTINCT FROM b.{self.quote(name)}::text"
                for name in columns
            )
        elif columns:
            terms.append(self.row_value("a", columns) + " IS NOT " + self.row_value("b", columns))
            terms.extend(
                f"typeof(a.{self.quote(name)}) IS NOT typeof(b.{self.quote(name)})"
                for name in columns
                if sqlite_affinity(old_types[name]) != sqlite_affinity(new_types[name])
            )
        return " OR ".join(terms) or "0 = 1"

    def row_value(self, alias: str, columns) -> str:
        return "(" + ", ".join(f"{alias}.{self.quote(name)}" for name in columns) + ")"

    # PostgreSQL: locks

    def locks_held(self) -> set[tuple[str, str]]:
        """(table, mode) of the locks this transaction holds on the application's tables.

        Only tables that existed when the run began (no one else can wait for a
        table the run creates), and no ACCESS SHARE: counting rows takes that
        mode on every table, so the rehearsal cannot tell the upgrade's from
        its own; it conflicts only with ACCESS EXCLUSIVE, which other DDL takes.
        """
        rows = self.query(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted "
            f"AND c.relnamespace = {literal(self.schema)}::regnamespace "
            "AND c.relkind IN ('r', 'p') AND l.mode <> 'AccessShareLock'"
        )
        watched = self.tables_at_start - IGNORED_TABLES
        return {(name, lock_mode_name(mode)) for name, mode in rows if name in watched}


def lock_order(released: tuple[tuple[str, str], LockTaken, float]) -> tuple:
    (table, mode), taken, _end = released
    return taken.step, table, mode, taken.at


def first_keyword(statement: str) -> str:
    match = re.match(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([A-Za-z]+)", statement, re.DOTALL)
    return match.group(1).upper() if match else ""


def one_line(statement: str) -> str:
    return re.sub(r"\s+", " ", statement).strip()


def identifiers(statement: str) -> set[str]:
    """The words of `statement` outside string literals, lower-cased, quotes taken off."""
    without_strings = re.sub(r"'(?:[^']|'')*'", " ", statement)
    words = re.findall(r'"((?:[^"]|"")+)"|`([^`]+)`|\[([^\]]+)\]|(\w+)', without_strings)
    return {next(part for part in found if part).lower() for found in words}


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sqlite_affinity(declared: str) -> str:
    """SQLite's type affinity rules (https://sqlite.org/datatype3.html, 3.1)."""
    upper = declared.upper()
    for fragment, affinity in SQLITE_AFFINITIES:
        if fragment in upper:
            return affinity
    if "BLOB" in upper or not upper:
        return "BLOB"
    if any(fragment in upper for fragment in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def lock_mode_name(mode: str) -> str:
    """PostgreSQL's `AccessExclusiveLock` as `LOCK TABLE` spells it: ACCESS EXCLUSIVE."""
    words = re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))
    return " ".join(word.upper() for word in words)
