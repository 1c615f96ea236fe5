"""Revision helpers for statements that must not hold the run's transaction open.

`outside_transaction()` is the way to write Alembic's autocommit block (for
`CREATE INDEX CONCURRENTLY`, say); `fill_in_batches(...)` fills a column batch
by batch, each batch committed on its own. Both adapt to the run they are in:

* the run began its own transaction (`alembic upgrade`, the start-up upgrade,
  pytest-alembic's built-in tests): Alembic's `autocommit_block`, which commits
  the run's transaction and lets each statement commit on its own;
* the caller handed in a connection inside its own open transaction (an app
  wrapping the upgrade in its transaction, pytest-alembic's
  `test_downgrade_leaves_no_trace`, which rolls every cycle back): no one but
  the caller may commit that transaction, and Alembic's `autocommit_block`
  would fail there on an assertion. The statements run in the caller's
  transaction instead, and the block says so (`concurrently` is False), once
  in the log;
* offline (`alembic upgrade --sql`): Alembic's `autocommit_block`, which writes
  `COMMIT` before the block's statements and `BEGIN` after them.

Which of the first two holds is decided once, by app.migration.guarded_run
before Alembic begins the run's transaction, and handed to the revisions in
`config.attributes` (Alembic's place for state shared with env.py).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from app.migration.errors import AUTOCOMMIT_IN_CALLER_TRANSACTION, MigrationError

log = logging.getLogger(__name__)

CALLER_TRANSACTION = "anibridge_caller_transaction"
"""The key of `config.attributes` under which a run in a caller's transaction is noted."""

FIRST_BATCH_ROWS = 1_000
MIN_BATCH_ROWS = 100
BATCH_SECONDS = 0.025
"""How long one batch should hold its row locks (SQLite: the write lock); the size follows.
A quarter of the 100 ms a request of the service may wait (docs/performance.md, benchmark 7):
on a loaded machine a batch can take a few times what the last one did."""
PAUSE_SHARE = 0.5
"""The pause after each committed batch, as a share of the batch's time. On SQLite the write
lock is free then, so the service's writes (retrying every few milliseconds) get in between
batches; on PostgreSQL the disk is left to the service's commits, which wait for their WAL to
be flushed, and flush the fill's with it."""
PROGRESS_EVERY_S = 5.0


@dataclass
class CallerTransaction:
    """The run is inside a transaction its caller opened; `explained` once that is logged."""

    explained: bool = False


@contextmanager
def caller_transaction_noted(config: Config, in_caller_transaction: bool) -> Iterator[None]:
    """For one run, tell the revisions whether it is inside its caller's open transaction."""
    if not in_caller_transaction:
        yield
        return
    config.attributes[CALLER_TRANSACTION] = CallerTransaction()
    try:
        yield
    finally:
        config.attributes.pop(CALLER_TRANSACTION, None)


def caller_transaction(context: MigrationContext) -> CallerTransaction | None:
    """The note of a run inside its caller's transaction; None offline or when the run owns it."""
    if context.as_sql or context.config is None:
        return None
    return context.config.attributes.get(CALLER_TRANSACTION)


@contextmanager
def leaving_transaction(context: MigrationContext) -> Iterator[bool]:
    """`outside_transaction()` for a given migration context (see there)."""
    caller = caller_transaction(context)
    if caller is None:
        with context.autocommit_block():
            yield True
        return
    if not caller.explained:
        log.info(
            "The migration runs inside a transaction its caller opened, which only the caller "
            "may commit: the statements of outside_transaction() blocks run in it (indexes are "
            "built without CONCURRENTLY, a fill's batches commit with the caller)"
        )
        caller.explained = True
    yield False


class AutocommitRefused:
    """Stands in for Alembic's `autocommit_block` inside a caller's transaction.

    Alembic would fail there on a bare assertion; refusing on entry, before
    anything runs, names the fix in one line.
    """

    def __enter__(self) -> None:
        raise MigrationError(AUTOCOMMIT_IN_CALLER_TRANSACTION)

    def __exit__(self, *_exc: object) -> None:
        return None


def refuse_autocommit_blocks(context: MigrationContext) -> None:
    """Inside a caller's transaction, make a revision's raw `autocommit_block()` refuse.

    `outside_transaction()` (and the upgrade's own steps) never call it there.
    """
    context.autocommit_block = AutocommitRefused


@contextmanager
def outside_transaction() -> Iterator[bool]:
    """Run the block's statements outside the run's transaction, where the run owns it.

    Yields True in Alembic's autocommit block (the run's transaction, with every
    revision before, is committed first; each statement then commits on its
    own), and offline; False inside a caller's open transaction, where the
    statements run in that transaction, and on SQLite, which builds nothing
    concurrently: leaving the run's transaction there would buy nothing and
    would end the file's all-or-nothing upgrade. Pass it on as
    `postgresql_concurrently=concurrently`: CONCURRENTLY cannot run in a
    transaction block.
    """
    context = op.get_context()
    if context.dialect.name == "sqlite" and not context.as_sql:
        yield False
        return
    with leaving_transaction(context) as left:
        yield left


def fill_in_batches(
    table: str,
    *,
    set_: str,
    where: str,
    key: str | None = None,
    batch_size: int | None = None,
) -> None:
    """`UPDATE table SET <set_> WHERE <where>`, one batch of rows at a time.

    `where` must select only the rows still to fill (`priority IS NULL`), so a
    fill that stopped part-way continues where it left off when run again.
    Batches follow `key` (default: the table's single-column primary key) upwards;
    each is one statement committed on its own where the run owns its
    transaction, so no row (on SQLite: the write lock) stays locked longer than
    a batch, and what a killed fill committed stays. Without `batch_size` the
    size follows the time a batch takes (about BATCH_SECONDS each). Inside a
    caller's transaction every batch runs in it; offline it is written as the
    one UPDATE the batches add up to. Progress is logged every few seconds.
    """
    context = op.get_context()
    quote = context.dialect.identifier_preparer.quote
    if context.as_sql:
        with context.autocommit_block():
            op.execute(f"UPDATE {quote(table)} SET {set_} WHERE {where}")
        return
    fill = BatchedFill(
        table=quote(table),
        key=quote(key or primary_key_column(context.connection, table)),
        set_=set_,
        where=where,
        one_statement=context.dialect.name == "postgresql",
        fixed_size=batch_size,
    )
    with leaving_transaction(context) as committing:
        fill.run(context, pause=committing)


def primary_key_column(connection: sa.Connection, table: str) -> str:
    """The table's primary key column; refused when it has none or several."""
    columns = sa.inspect(connection).get_pk_constraint(table)["constrained_columns"]
    if len(columns) != 1:
        raise MigrationError(
            f"fill_in_batches({table!r}): the table has no single-column primary key to walk "
            "the rows by; pass key= naming a unique, indexed column"
        )
    return columns[0]


@dataclass
class BatchedFill:
    """The batches of one fill, walking `key` upwards; sized by time unless `fixed_size`.

    A batch is the next `size` keys past the last batch's, read along the key's
    index whatever `where` says, and the rows among them that `where` selects
    are updated. `where` is wrapped in a CASE, which no index serves: the rows
    are found along the key's index, never through an index of a column
    `where` names (`priority IS NULL` on `ix_job_priority`), which SQLite's
    planner prefers otherwise, going through every unfilled row for each batch.
    """

    table: str
    key: str
    set_: str
    where: str
    one_statement: bool
    """PostgreSQL: the batch's keys and its UPDATE in one statement (one round trip)."""
    fixed_size: int | None = None
    filled: int = 0
    started: float = field(default_factory=time.monotonic)

    def fill_batch(self, connection: sa.Connection, after: Any, rows: int) -> tuple[Any, int]:
        """Fill the next `rows` keys past `after` (None: from the first): the batch's last
        key (None past the end) and how many rows it filled."""
        if self.one_statement:
            return self.fill_batch_in_one_statement(connection, after, rows)
        upto = self.window_end(connection, after, rows)
        if upto is None:
            return None, 0
        return upto, self.fill_window(connection, after, upto)

    def fill_batch_in_one_statement(
        self, connection: sa.Connection, after: Any, rows: int
    ) -> tuple[Any, int]:
        """`fill_batch` as one PostgreSQL statement: the keys in a CTE, the UPDATE in
        another (PostgreSQL runs a data-modifying CTE whatever the query reads of it)."""
        last_key = f"(SELECT max({self.key}) FROM batch)"
        statement = sa.text(
            f"WITH batch AS ({self.keys_past(after)} ORDER BY {self.key} LIMIT :rows), "
            f"filled AS ({self.update_upto(after, last_key)} RETURNING 1) "
            f"SELECT {last_key}, (SELECT count(*) FROM filled)"
        )
        upto, filled = connection.execute(statement, {"rows": rows, **bound_after(after)}).one()
        return upto, filled

    def window_end(self, connection: sa.Connection, after: Any, rows: int) -> Any:
        """The greatest of the next `rows` keys past `after`; None at the end."""
        statement = sa.text(
            f"SELECT max({self.key}) FROM ({self.keys_past(after)} "
            f"ORDER BY {self.key} LIMIT :rows) AS batch"
        )
        return connection.execute(statement, {"rows": rows, **bound_after(after)}).scalar()

    def fill_window(self, connection: sa.Connection, after: Any, upto: Any) -> int:
        """Fill the rows `where` selects among the keys past `after` up to `upto`; how many."""
        statement = sa.text(self.update_upto(after, ":upto"))
        return connection.execute(statement, {"upto": upto, **bound_after(after)}).rowcount

    def keys_past(self, after: Any) -> str:
        past = "" if after is None else f" WHERE {self.key} > :after"
        return f"SELECT {self.key} FROM {self.table}{past}"

    def update_upto(self, after: Any, upto: str) -> str:
        """The UPDATE of the rows `where` selects among the keys past `after` up to the
        SQL expression `upto`."""
        past = "" if after is None else f"{self.key} > :after AND "
        return (
            f"UPDATE {self.table} SET {self.set_} WHERE {past}{self.key} <= {upto} "
            f"AND CASE WHEN ({self.where}) THEN 1 ELSE 0 END = 1"
        )

    def run(self, context: MigrationContext, *, pause: bool) -> None:
        connection, after = context.connection, None
        size = self.fixed_size or FIRST_BATCH_ROWS
        reported = self.started
        while True:
            began = time.monotonic()
            upto, filled = self.fill_batch(connection, after, size)
            if upto is None:
                break
            seconds = time.monotonic() - began
            self.filled += filled
            after = upto
            if pause:
                time.sleep(seconds * PAUSE_SHARE)
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                reported = time.monotonic()
                log.info(
                    "Filling %s: %d rows so far (batches of %d)", self.table, self.filled, size
                )
            size = self.fixed_size or next_batch_size(size, seconds)
        log.info(
            "Filled %s: %d rows in %.1f s", self.table, self.filled, time.monotonic() - self.started
        )


def bound_after(after: Any) -> dict[str, Any]:
    return {} if after is None else {"after": after}


def next_batch_size(size: int, seconds: float) -> int:
    """The size that should take about BATCH_SECONDS: at most double the last, at least
    MIN_BATCH_ROWS (below that a batch's time is mostly its fixed cost)."""
    if seconds <= 0:
        return size * 2
    return max(MIN_BATCH_ROWS, min(size * 2, int(size * BATCH_SECONDS / seconds)))
