"""An expand/contract change of `job`, and the rows it runs over (tests and the lock benchmark).

The two revisions in tests/data/rolling/ add `job.fixture_priority` the way a change
must be written when replicas of the previous release keep serving during the
upgrade (docs/replicas.md): `EXPAND` after the released head, `CONTRACT` in a
later release. They are test fixtures, not product revisions.
"""

import hashlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

REVISIONS_DIR = Path(__file__).resolve().parent / "data" / "rolling"
EXPAND = "e5a7d1000001"
CONTRACT = "c0d7ac000002"
# Finished jobs: a history of rows to fill. Running jobs, which a start of a later
# release must leave to their replicas, are loaded by tests/test_rolling_upgrade.py.
FINISHED_STATUSES = ("completed", "failed", "cancelled")
# One statement on the server: about 20 s for 1,000,000 rows and the released indexes here.
INSERT_JOBS = sa.text(
    "INSERT INTO job (id, status, progress, downloaded_bytes, source_site, created_at, "
    "updated_at) "
    "SELECT md5(i::text), (CAST(:statuses AS text[]))[1 + i % 3], i % 100, i * 1000, "
    "'aniworld.to', now() - i * interval '1 second', now() - i * interval '1 second' "
    "FROM generate_series(1, :count) AS i"
)


def revision_file(revision: str) -> Path:
    """The file of one of the two revisions."""
    (path,) = REVISIONS_DIR.glob(f"*-{revision}_*.py")
    return path


def insert_jobs(url: URL, count: int) -> None:
    """Insert `count` jobs, numbered 1 to `count` (see `job_id`), into a database at head."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(INSERT_JOBS, {"statuses": list(FINISHED_STATUSES), "count": count})
    finally:
        engine.dispose()


def job_id(number: int) -> str:
    """The id `insert_jobs` gave job number `number`."""
    return hashlib.md5(str(number).encode()).hexdigest()


def index_is_valid(connection: sa.Connection, name: str) -> bool:
    """Whether index `name` exists and is valid (a concurrent build that stopped leaves it not)."""
    query = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"
    return bool(connection.execute(sa.text(query), {"name": name}).scalar())


def upgrades_recorded(connection: sa.Connection, revision: str) -> int:
    """The migration history's upgrade rows for `revision`."""
    query = (
        "SELECT count(*) FROM anibridge_migration_history "
        "WHERE revision = :revision AND direction = 'upgrade'"
    )
    return connection.execute(sa.text(query), {"revision": revision}).scalar_one()
