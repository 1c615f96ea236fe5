"""Row dumps that fail fast: a mismatch reports counts and digests, never a full diff.

pytest's own explanation of two unequal dicts pretty-prints both and runs a
line diff over them, which for a few thousand rows takes many minutes. The
`pytest_assertrepr_compare` hook in conftest.py uses `explain_difference`
instead: per table, the row counts and a digest of each side, then the first
row that differs.
"""

import hashlib
from typing import Any

FIRST_ROW_CHARS = 300


class RowDump(dict[str, list[tuple]]):
    """Table name -> sorted rows, as `tests.legacy_data.dump_rows` returns them."""


def digest(rows: list[tuple]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:12]


def short(row: Any) -> str:
    text = repr(row)
    return text if len(text) <= FIRST_ROW_CHARS else text[:FIRST_ROW_CHARS] + "..."


def first_difference(left: list[tuple], right: list[tuple]) -> str:
    for index, (mine, theirs) in enumerate(zip(left, right, strict=False)):
        if mine != theirs:
            return f"first differing row #{index}: {short(mine)} != {short(theirs)}"
    shorter, longer = sorted((left, right), key=len)
    return f"row #{len(shorter)} is only on one side: {short(longer[len(shorter)])}"


def explain_difference(left: dict, right: dict) -> list[str]:
    """Lines saying which tables differ and how, cheap for any number of rows."""
    lines = ["row dumps differ (tables: rows and digest, left vs right)"]
    for table in sorted(set(left) | set(right)):
        if table not in left or table not in right:
            side = "left" if table in left else "right"
            lines.append(f"{table}: only on the {side}")
            continue
        mine, theirs = left[table], right[table]
        if mine == theirs:
            continue
        lines.append(
            f"{table}: {len(mine)} rows {digest(mine)} vs {len(theirs)} rows {digest(theirs)}; "
            + first_difference(mine, theirs)
        )
    return lines
