"""The SQL a revision sends to PostgreSQL, as the lint's offline run renders it, and
what each statement does to the tables it names.

The lint runs `upgrade()` offline for PostgreSQL; every statement it renders,
Alembic operation or SQL written in `op.execute`, becomes one `Statement` here,
with where it runs: in the revision's transaction, or on its own in an
autocommit block. squawk (app/migration/authoring/squawk.py) and the lint's
statement rules (app/migration/authoring/lock_rules.py) read this list.
"""

import re
from dataclasses import dataclass

NAME = r'(?:"?\w+"?\.)?"?(\w+)"?'
ALTER_TABLE = re.compile(
    rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{NAME}\s+(.*)$", re.I | re.S
)
CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(CONCURRENTLY\s+)?(IF\s+NOT\s+EXISTS\s+)?{NAME}\s+"
    rf"ON\s+(?:ONLY\s+)?{NAME}",
    re.I,
)
ON_TABLE = re.compile(
    rf"^(?:UPDATE|DELETE\s+FROM|INSERT\s+INTO|TRUNCATE(?:\s+TABLE)?|"
    rf"(?:CREATE|DROP)\s+TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)\s+(?:ONLY\s+)?{NAME}",
    re.I,
)
DROP_INDEX = re.compile(rf"^DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?{NAME}", re.I)
ACTION_OBJECT = re.compile(
    rf"^(?:ADD\s+CONSTRAINT|DROP\s+CONSTRAINT(?:\s+IF\s+EXISTS)?|VALIDATE\s+CONSTRAINT|"
    rf"RENAME\s+CONSTRAINT|ALTER\s+(?:COLUMN\s+)?|DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?|"
    rf"RENAME\s+(?:COLUMN\s+)?(?!TO\b)|ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?!CONSTRAINT\b|PRIMARY\b|UNIQUE\b|FOREIGN\b|CHECK\b))\s*{NAME}",
    re.I,
)
REFERENCES = re.compile(rf"\bREFERENCES\s+{NAME}", re.I)
SERIAL_OR_IDENTITY = re.compile(
    r"\b(?:SMALL|BIG)?SERIAL\d?\b|\bGENERATED\s+(?:ALWAYS|BY\s+DEFAULT)\s+AS\s+(?:IDENTITY|\(.*\)\s*STORED)",
    re.I | re.S,
)
VOLATILE_DEFAULT = re.compile(
    r"\bDEFAULT\s+.*\b(?:gen_random_uuid|uuid_generate_v\d|random|clock_timestamp|timeofday|"
    r"nextval)\s*\(",
    re.I | re.S,
)
ROW_WORK_ACTION = re.compile(
    r"\bTYPE\b|\bSET\s+NOT\s+NULL\b|\bVALIDATE\s+CONSTRAINT\b|\bSET\s+(?:UN)?LOGGED\b",
    re.I,
)
ADDED_CONSTRAINT = re.compile(
    r"\bADD\s+(?:CONSTRAINT\s+\S+\s+)?(?:PRIMARY|UNIQUE|FOREIGN|CHECK)\b", re.I
)
SKIPS_CHECKING = re.compile(r"\bNOT\s+VALID\b|\bUSING\s+INDEX\b", re.I)
RERUNNABLE = re.compile(r"\bIF\s+(?:NOT\s+)?EXISTS\b", re.I)
ADDS_OR_DROPS = re.compile(
    r"^(?:CREATE\s+(?:UNIQUE\s+)?(?:INDEX|TABLE)|DROP\s+(?:INDEX|TABLE))\b", re.I
)
ACTION_ADDS_OR_DROPS = re.compile(r"^(?:ADD|DROP|RENAME)\b", re.I)
FILL = re.compile(r"^(?:UPDATE|DELETE)\b", re.I)
SQL_TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(\w*)\$.*?\$\1\$|--[^\n]*|;|[^'\"$;-]+|.",
    re.S,
)


@dataclass(frozen=True)
class Statement:
    """One statement of the upgrade.

    `raw`: written by hand in `op.execute` (no Alembic operation describes it);
    `autocommit`: runs in an autocommit block, committed on its own;
    `segment`: counts the transaction boundaries before it (each autocommit
    block starts and ends one), so statements of one transaction share it;
    `type_kept_in_place`: a type change the lint, knowing the old type, found
    PostgreSQL makes without rewriting the table.
    """

    sql: str
    raw: bool
    autocommit: bool
    segment: int
    type_kept_in_place: bool = False

    @property
    def table(self) -> str | None:
        return target(self.sql)[0]

    @property
    def subject(self) -> str:
        """`table` or `table.object` (column, constraint, index), as a lint key names it."""
        table, name = target(self.sql)
        return ".".join(part for part in (table, name) if part) or self.sql.split()[0].lower()


def split_sql(text: str) -> list[str]:
    """The statements of `text`, split at semicolons outside quotes, quoted names,
    dollar-quoted bodies and comments; comments dropped."""
    statements, current = [], []
    for token in SQL_TOKEN.finditer(text):
        piece = token.group(0)
        if piece == ";":
            statements.append("".join(current))
            current = []
        elif not piece.startswith("--"):
            current.append(piece)
    statements.append("".join(current))
    return [statement.strip() for statement in statements if statement.strip()]


def target(sql: str) -> tuple[str | None, str | None]:
    """The table a statement works on and the object in it (column, constraint,
    index) it names, each None where it names none."""
    if match := ALTER_TABLE.match(sql):
        table, action = match.groups()
        named = ACTION_OBJECT.match(action.strip())
        return table, named.group(1) if named else None
    if match := CREATE_INDEX.match(sql):
        return match.group(4), match.group(3)
    if match := ON_TABLE.match(sql):
        return match.group(1), None
    if match := DROP_INDEX.match(sql):
        return None, match.group(1)
    return None, None


def action(sql: str) -> str:
    """What an ALTER TABLE does after its table name; empty for any other statement."""
    match = ALTER_TABLE.match(sql)
    return match.group(2).strip() if match else ""


def is_fill(sql: str) -> bool:
    """An UPDATE or DELETE: it locks every row it changes until its transaction ends."""
    return FILL.match(sql) is not None


def rewrites_by_adding(sql: str) -> bool:
    """ADD COLUMN of a serial, identity or stored generated column, or with a volatile
    default: PostgreSQL writes a value into every row, rewriting the table."""
    added = action(sql)
    if not re.match(r"ADD\b", added, re.I) or ADDED_CONSTRAINT.match(added):
        return False
    return bool(SERIAL_OR_IDENTITY.search(added) or VOLATILE_DEFAULT.search(added))


def works_through_rows(statement: Statement) -> bool:
    """Whether the statement reads or writes every row of its table (scan, rewrite,
    index build, fill), as opposed to changing only the catalogue."""
    sql = statement.sql
    if statement.type_kept_in_place:
        return False
    if is_fill(sql) or re.match(r"^INSERT\s+INTO\s+.*\bSELECT\b", sql, re.I | re.S):
        return True
    if match := CREATE_INDEX.match(sql):
        return match.group(1) is None
    altered = action(sql)
    if ROW_WORK_ACTION.search(altered) or rewrites_by_adding(sql):
        return True
    return bool(ADDED_CONSTRAINT.match(altered)) and not SKIPS_CHECKING.search(altered)


ROWS, WRITES, READS_AND_WRITES = 1, 2, 3  # what a lock makes the service wait for


def lock_levels(sql: str) -> dict[str, int]:
    """What waits on each table until this statement's transaction ends: an ALTER TABLE
    takes ACCESS EXCLUSIVE (reads and writes wait), but a foreign key SHARE ROW EXCLUSIVE
    on both tables (writes) and a lone VALIDATE CONSTRAINT SHARE UPDATE EXCLUSIVE
    (nothing); CREATE INDEX SHARE (writes); DROP TABLE and TRUNCATE ACCESS EXCLUSIVE; a
    fill locks the rows it changes."""
    table = target(sql)[0]
    if table is None:
        return {}
    if altered := action(sql):
        if re.match(r"VALIDATE\s+CONSTRAINT\b", altered, re.I):
            return {}
        if referenced := REFERENCES.findall(altered):
            return dict.fromkeys([table, *referenced], WRITES)
        return {table: READS_AND_WRITES}
    creates_index = CREATE_INDEX.match(sql)
    if creates_index and creates_index.group(1) is None:
        return {table: WRITES}
    if re.match(r"^(?:DROP\s+TABLE|TRUNCATE)\b", sql, re.I):
        return {table: READS_AND_WRITES}
    return {table: ROWS} if is_fill(sql) else {}


def runs_twice(sql: str) -> bool:
    """Whether the statement succeeds when run again after it committed once: IF [NOT]
    EXISTS forms, data changes and ALTERs that set a state do; CREATE/DROP/ADD/RENAME
    without IF [NOT] EXISTS do not ("already exists", "does not exist")."""
    if ADDS_OR_DROPS.match(sql):
        return RERUNNABLE.search(sql) is not None
    altered = action(sql)
    if ACTION_ADDS_OR_DROPS.match(altered):
        if re.match(r"ADD\s+(?:CONSTRAINT|PRIMARY|UNIQUE|FOREIGN|CHECK)\b|RENAME\b", altered, re.I):
            return False
        return RERUNNABLE.search(altered) is not None
    return True
