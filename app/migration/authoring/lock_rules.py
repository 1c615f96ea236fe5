"""Lock hazards that show only in the order of a revision's statements, which
neither the recording of single operations nor squawk sees, and the one call
that gathers them with squawk's findings for the lint.

* `validate_in_transaction <table>.<constraint>`: VALIDATE CONSTRAINT in the
  transaction that added the constraint NOT VALID, whose lock is then held
  through the whole validation;
* `not_rerunnable <table>[.<object>]`: a statement committed before the last
  autocommit block ends (before it, or in it) that fails when run again:
  a failure later in the revision leaves it committed, the revision is not
  stamped, and every next run starts from the top and stops on it;
* `lock_held_across <table>`: a lock that blocks the table's reads or writes,
  held until the transaction commits, through a later statement that works
  through a table's rows (unless that statement locks the table as much
  itself: then its own finding covers it);
* `fill_in_transaction <table>`: an UPDATE or DELETE in the upgrade's
  transaction, which keeps every row it changes locked until the upgrade commits;
* `rewriting_column <table>.<column>`: ADD COLUMN of a serial, identity or
  stored generated column, or with a volatile default, which rewrites the table.
"""

import re
from collections.abc import Iterator, Sequence
from operator import itemgetter

from app.migration.authoring.squawk import squawk_hazards
from app.migration.authoring.statements import (
    Statement,
    action,
    is_fill,
    lock_levels,
    rewrites_by_adding,
    runs_twice,
    target,
    works_through_rows,
)

Hazard = tuple[str, str, str]
OWN_TRANSACTION = "`with outside_transaction():` (app.migration.patterns)"
ADDED_NOT_VALID = re.compile(r'^ADD\s+CONSTRAINT\s+"?(\w+)"?.*\bNOT\s+VALID\b', re.I | re.S)
VALIDATED = re.compile(r'^VALIDATE\s+CONSTRAINT\s+"?(\w+)"?', re.I)
DROPPED_IF_EXISTS = re.compile(r"\bDROP\b.*\bIF\s+EXISTS\b", re.I | re.S)


def statement_hazards(
    statements: Sequence[Statement], created_tables: set[str], judged: set[str]
) -> list[Hazard]:
    """What the statement rules and squawk find in a revision's rendered SQL."""
    on_old_tables = [s for s in statements if s.table not in created_tables]
    return [
        *validations_in_their_adding_transaction(on_old_tables),
        *statements_a_rerun_repeats(statements),
        *locks_held_across_slow_statements(statements, created_tables),
        *fills_in_the_transaction(on_old_tables),
        *rewriting_columns(on_old_tables),
        *squawk_hazards(statements, created_tables, judged),
    ]


def validations_in_their_adding_transaction(statements: Sequence[Statement]) -> Iterator[Hazard]:
    added_not_valid: dict[str, int] = {}
    for statement in statements:
        if statement.autocommit:
            continue
        altered = action(statement.sql)
        if added := ADDED_NOT_VALID.match(altered):
            added_not_valid[added.group(1)] = statement.segment
        validated = VALIDATED.match(altered)
        if validated and added_not_valid.get(validated.group(1)) == statement.segment:
            yield (
                "validate_in_transaction",
                statement.subject,
                "VALIDATE CONSTRAINT runs in the transaction that added the constraint NOT "
                "VALID, so that lock (ACCESS EXCLUSIVE for a check, SHARE ROW EXCLUSIVE for a "
                "foreign key) stays held while every row is checked; validate in its own "
                f"transaction: {OWN_TRANSACTION}",
            )


def statements_a_rerun_repeats(statements: Sequence[Statement]) -> Iterator[Hazard]:
    blocks = [statement.segment for statement in statements if statement.autocommit]
    if not blocks:
        return
    dropped_first: set[str | None] = set()
    for statement in statements:
        if statement.segment > max(blocks):
            return
        name = target(statement.sql)[1]
        if DROPPED_IF_EXISTS.search(statement.sql):
            dropped_first.add(name)
        elif not runs_twice(statement.sql) and name not in dropped_first:
            yield (
                "not_rerunnable",
                statement.subject,
                f"`{statement.sql.splitlines()[0][:80]}` is committed before the revision "
                "ends (an autocommit block commits what precedes it and each statement in "
                "it); when a later step fails, the next run starts from the top and this "
                "statement fails again every time; give it a revision of its own before this "
                "one, make it run twice (if_not_exists=True / IF NOT EXISTS, if_exists=True, "
                "DROP ... IF EXISTS before ADD CONSTRAINT; SQLite has no ADD COLUMN IF NOT "
                "EXISTS) or move it after the autocommit block",
            )


def locks_held_across_slow_statements(
    statements: Sequence[Statement], created_tables: set[str]
) -> Iterator[Hazard]:
    """A slow statement that itself locks a table as much as an earlier statement did has
    its own finding; a VALIDATE of the constraint the earlier statement added is
    validate_in_transaction's."""
    held: dict[tuple[int, str], tuple[int, Statement]] = {}
    reported: set[str] = set()
    for statement in statements:
        if statement.autocommit:
            continue
        own = lock_levels(statement.sql)
        if works_through_rows(statement) and statement.table not in created_tables:
            for (segment, table), (level, locker) in held.items():
                if (
                    segment == statement.segment
                    and level > own.get(table, 0)
                    and locker.subject != statement.subject
                    and table not in reported
                ):
                    reported.add(table)
                    yield held_across(table, locker, statement)
        for table, level in own.items():
            if table not in created_tables:
                earlier = held.get((statement.segment, table), (0, statement))
                held[(statement.segment, table)] = max(
                    earlier, (level, statement), key=itemgetter(0)
                )


def held_across(table: str, locker: Statement, slow: Statement) -> Hazard:
    return (
        "lock_held_across",
        table,
        f"`{words(locker)}` locks {table} until the transaction commits, and `{words(slow)}` "
        f"works through every row of {slow.table} before that: {table}'s readers or writers "
        "wait all that time; commit the quick change first (an autocommit block or "
        "app.migration.patterns.outside_transaction() after it, or a revision of its own) and "
        "run the slow step after that",
    )


def fills_in_the_transaction(statements: Sequence[Statement]) -> Iterator[Hazard]:
    for statement in statements:
        if is_fill(statement.sql) and not statement.autocommit:
            yield (
                "fill_in_transaction",
                statement.subject,
                f"`{words(statement)}` runs in the upgrade's transaction and keeps every row "
                "it changes locked until the upgrade commits, so the service's writes to them "
                "wait; fill with fill_in_batches(table, set_=..., where=...) from "
                "app.migration.patterns, which commits each batch, in a revision of its own "
                '(docs/migrations.md, "Data migrations")',
            )


def rewriting_columns(statements: Sequence[Statement]) -> Iterator[Hazard]:
    for statement in statements:
        if rewrites_by_adding(statement.sql):
            yield (
                "rewriting_column",
                statement.subject,
                "a serial, identity or stored generated column, or a volatile default, "
                "writes a value into every row: PostgreSQL rewrites the table under ACCESS "
                "EXCLUSIVE; add the column nullable without it, SET DEFAULT for new rows, "
                "then fill the old rows with fill_in_batches (app.migration.patterns) in a "
                "revision of its own",
            )


def words(statement: Statement, count: int = 6) -> str:
    """The statement's first words, enough to recognise it in a finding."""
    return " ".join(statement.sql.split()[:count])
