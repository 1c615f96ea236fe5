"""squawk (https://squawkhq.com), run on the SQL the lint renders, its findings keyed
like the lint's own.

squawk reads raw SQL, which the lint's recording of Alembic operations cannot
judge. Where the recording judges an Alembic operation (which type changes
rewrite, whether a SET NOT NULL is proven by a validated check, data loss),
its verdict stands and squawk's on that statement is dropped; on SQL written
in `op.execute`, and for what the recording has no rule for, squawk's counts.
Rules left out are listed in DROPPED with the reason (docs/migrations.md,
"squawk's rules").
"""

import json
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Iterator, Sequence

from app.migration.authoring.statements import Statement

PG_VERSION = "15"
KIND_OF_RULE = {
    "require-concurrent-index-creation": "index_not_concurrent",
    "ban-concurrent-index-creation-in-transaction": "index_not_concurrent",
    "adding-not-nullable-field": "set_not_null",
    "adding-required-field": "not_null",
    "constraint-missing-not-valid": "validated_constraint",
    "adding-foreign-key-constraint": "validated_constraint",
    "disallowed-unique-constraint": "validated_constraint",
    "adding-serial-primary-key-field": "validated_constraint",
    "changing-column-type": "rewriting_type",
    "adding-field-with-default": "rewriting_column",
    "renaming-column": "rename_column",
    "renaming-table": "rename_table",
    "ban-drop-column": "drop_column",
    "ban-drop-table": "drop_table",
}
DROPPED = {
    "require-lock-timeout": "the upgrade sets lock_timeout itself (app/migration/locking.py)",
    "require-statement-timeout": "the upgrade sets statement_timeout itself",
    "require-timeout-settings": "the same two settings, which the upgrade sets",
    "prefer-robust-stmts": "not_rerunnable knows which statements a failed run repeats, "
    "including those of the transaction an autocommit block commits, which squawk skips",
    "prefer-bigint-over-int": "a style choice; the model decides the column's type",
    "prefer-bigint-over-smallint": "a style choice; the model decides the column's type",
    "prefer-identity": "a style choice; what a serial column locks, rewriting_column says",
    "prefer-text-field": "a style choice, and wrong on a lock: a longer VARCHAR keeps the table",
    "prefer-timestamp-tz": "a style choice; the model decides the column's type",
    "ban-char-field": "a style choice; the model decides the column's type",
    "require-concurrent-index-deletion": "DROP INDEX only changes the catalogue; a lock it "
    "keeps through a slow statement is lock_held_across's finding",
    "ban-drop-not-null": "relaxing a constraint makes nothing wait and breaks no reader",
    "ban-drop-constraint": "relaxing a constraint makes nothing wait and breaks no reader",
    "transaction-nesting": "the BEGIN/COMMIT lines around the SQL are the lint's own",
    "ban-uncommitted-transaction": "the BEGIN/COMMIT lines around the SQL are the lint's own",
}
SAFE_PATTERN = {
    "index_not_concurrent": "build it inside `with outside_transaction() as concurrently:` "
    "(app.migration.patterns) with postgresql_concurrently=concurrently, if_not_exists=True",
    "set_not_null": "add CHECK (<column> IS NOT NULL) NOT VALID (after DROP CONSTRAINT IF "
    "EXISTS), then in outside_transaction() VALIDATE it, SET NOT NULL and drop the check",
    "not_null": "add it nullable, fill it in batches, then make it NOT NULL",
    "validated_constraint": "add it NOT VALID (after DROP CONSTRAINT IF EXISTS), then "
    "VALIDATE CONSTRAINT in outside_transaction(), not in the transaction that added it; "
    "for unique: a unique index built concurrently, then ADD CONSTRAINT ... USING INDEX",
    "rewriting_type": "add a column of the new type, backfill it in batches, move the code to "
    "it, drop the old one in a later release",
    "rewriting_column": "add the column without the default, SET DEFAULT, then fill the old "
    "rows with fill_in_batches (app.migration.patterns)",
    "rename_column": "expand now, contract in a later release",
    "rename_table": "expand now, contract in a later release",
    "drop_column": "expand now, contract in a later release",
    "drop_table": "expand now, contract in a later release",
}


class SquawkMissing(RuntimeError):
    """squawk's binary is not installed, so raw SQL would go unread."""


def squawk_binary() -> str:
    """The squawk installed with the dev dependencies: beside this Python, else on PATH."""
    for path in (sysconfig.get_path("scripts"), None):
        if found := shutil.which("squawk", path=path):
            return found
    raise SquawkMissing(
        "squawk not found: install the dev dependencies "
        "(pip install -c constraints.txt -e '.[dev]', which brings squawk-cli==2.70.0)"
    )


def squawk_script(statements: Sequence[Statement]) -> tuple[str, list[Statement | None]]:
    """The SQL as PostgreSQL gets it, one statement a line with BEGIN/COMMIT where the
    revision's transaction starts and ends, and the statement on each line."""
    lines: list[str] = []
    owners: list[Statement | None] = []
    in_transaction = False
    for statement in statements:
        if statement.autocommit == in_transaction:
            lines.append("COMMIT;" if in_transaction else "BEGIN;")
            owners.append(None)
            in_transaction = not in_transaction
        lines.append(" ".join(statement.sql.split()) + ";")
        owners.append(statement)
    if in_transaction:
        lines.append("COMMIT;")
        owners.append(None)
    return "\n".join(lines), owners


def squawk_findings(script: str, excluded: Iterable[str] = tuple(DROPPED)) -> list[dict]:
    """squawk's JSON report on `script` (rule_name, line counted from 0, message, help),
    without the `excluded` rules."""
    result = subprocess.run(
        [
            squawk_binary(),
            "--reporter=json",
            f"--pg-version={PG_VERSION}",
            f"--exclude={','.join(excluded)}",
        ],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 1):
        raise SquawkMissing(f"squawk failed (exit {result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout or "[]")


def squawk_hazards(
    statements: Sequence[Statement], created_tables: set[str], judged: set[str]
) -> Iterator[tuple[str, str, str]]:
    """(kind, subject, problem) for each squawk finding on a table that held rows, except
    where the recording judged the Alembic operation (`judged`: the kinds it has rules for)."""
    if not statements:
        return
    script, owners = squawk_script(statements)
    for finding in squawk_findings(script):
        statement = owners[finding["line"]]
        if statement is None or statement.table in created_tables:
            continue
        rule = finding["rule_name"]
        kind = kind_of(rule, statement)
        if kind in judged and not statement.raw:
            continue
        advice = SAFE_PATTERN.get(kind) or finding.get("help") or ""
        yield kind, statement.subject, f"{finding['message']} (squawk {rule}); {advice}"


def kind_of(rule: str, statement: Statement) -> str:
    """The lint's kind for a squawk rule; squawk reports a VALIDATE in the transaction
    that added the constraint NOT VALID as a missing NOT VALID."""
    if rule == "constraint-missing-not-valid" and " VALIDATE " in f" {statement.sql.upper()} ":
        return "validate_in_transaction"
    return KIND_OF_RULE.get(rule, rule)
