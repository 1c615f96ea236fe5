"""Rows inserted at each revision, so every later migration runs over real data.

Keys are revision ids. Values are plain rows, written with the columns that
exist at that revision: a revision's data must never follow the models.
"""

from datetime import UTC, datetime

BASELINE = "5cb5dab892ec"
STRM_URL_MAPPING = "bd4dbe993fef"

CHECKED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

AT_REVISION_DATA = {
    BASELINE: {
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
    },
    STRM_URL_MAPPING: {
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
        ]
    },
}


def rows_by_revision() -> dict[str, list[dict]]:
    """AT_REVISION_DATA in pytest-alembic's shape: one flat list of tagged rows per revision."""
    return {
        revision: [
            {"__tablename__": table, **row} for table, rows in tables.items() for row in rows
        ]
        for revision, tables in AT_REVISION_DATA.items()
    }
