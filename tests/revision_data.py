"""Rows for every table, inserted by the revision that creates it, so later revisions run over data.

Keys are table names. Values are plain rows, written with the columns the table
has when it is created: a table's rows must never follow the models. The
revision that creates each table is found by running the chain
(tests/chain.py, `tables_created_by`), so no revision is named here.
"""

from datetime import UTC, datetime

import sqlalchemy as sa

from app.data.models import metadata
from tests.chain import tables_created_by

CHECKED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

TABLE_ROWS = {
    "job": [
        {
            "id": "0" * 31 + "1",
            "status": "completed",
            "progress": 100.0,
            "downloaded_bytes": 3 * 2**32,
            "total_bytes": 3 * 2**32,
            "speed": None,
            "eta": None,
            "message": "Fertig: Folge 1 – 進撃の巨人",
            "result_path": "/downloads/Attack on Titan/S01E01.mkv",
            "source_site": "s.to",
            "created_at": CHECKED,
            "updated_at": CHECKED,
        }
    ],
    "episodeavailability": [
        {
            "slug": "attack-on-titan",
            "season": 1,
            "episode": 1,
            "language": "German Dub",
            "site": "aniworld.to",
            "available": True,
            "height": 1080,
            "vcodec": "h264",
            "provider": "VOE",
            "checked_at": CHECKED,
            "extra": {"providers": ["VOE", "Filemoon"], "note": "ü"},
        }
    ],
    "clienttask": [
        {
            "hash": "a" * 40,
            "name": "Attack on Titan S01E01 [German Dub]",
            "slug": "attack-on-titan",
            "season": 1,
            "episode": 1,
            "language": "German Dub",
            "site": "aniworld.to",
            "job_id": "0" * 31 + "1",
            "save_path": "/downloads",
            "category": "sonarr",
            "added_on": CHECKED,
            "completion_on": None,
            "state": "completed",
        }
    ],
    "strm_url_mapping": [
        {
            "id": 1,
            "strm_path": "/media/Attack on Titan/S01E01.strm",
            "resolved_url": "https://provider.example/stream/abc?token=x",
            "resolved_at": CHECKED,
            "slug": "attack-on-titan",
            "season": 1,
            "episode": 1,
            "language": "German Dub",
            "site": "aniworld.to",
            "provider_used": "VOE",
        }
    ],
}


def rows_at(revision: str) -> dict[str, list[dict]]:
    """The rows of the tables `revision` creates, by table."""
    return {
        table: TABLE_ROWS[table] for table in tables_created_by()[revision] if table in TABLE_ROWS
    }


def rows_by_revision() -> dict[str, list[dict]]:
    """The rows in pytest-alembic's shape: one flat list of tagged rows per revision."""
    tagged = {
        revision: [
            {"__tablename__": table, **row}
            for table, rows in rows_at(revision).items()
            for row in rows
        ]
        for revision in tables_created_by()
    }
    return {revision: rows for revision, rows in tagged.items() if rows}


EXAMPLE_VALUES = (
    (sa.Boolean, "True"),
    (sa.Integer, "1"),
    (sa.Numeric, "1.5"),
    (sa.Float, "1.5"),
    (sa.DateTime, "CHECKED"),
    (sa.String, '"text"'),
    (sa.JSON, "{}"),
)
"""A value of each column type, as source text for the line a failure asks to add."""


def example_value(column: sa.Column) -> str:
    kind = column.type.impl_instance if isinstance(column.type, sa.TypeDecorator) else column.type
    return next((value for known, value in EXAMPLE_VALUES if isinstance(kind, known)), "None")


def example_line(table: str) -> str:
    """A TABLE_ROWS entry for `table` as the models declare it (its key alone if they do not)."""
    columns = metadata.tables[table].columns if table in metadata.tables else []
    row = ", ".join(f'"{column.name}": {example_value(column)}' for column in columns)
    return f'"{table}": [{{{row}}}],'


def seed_rows_request(table: str, revision: str) -> str:
    """What to add so the revisions after `revision` run over rows of the table it creates."""
    return (
        f"table {table} (created by revision {revision}) has no rows to migrate: add rows written "
        f"with its columns at that revision to TABLE_ROWS in tests/revision_data.py under the key "
        f'"{table}", e.g.\n    {example_line(table)}'
    )
