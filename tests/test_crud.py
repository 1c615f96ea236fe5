"""Every data-access function in app/data/crud.py, on a migrated SQLite and PostgreSQL database.

The database is brought to head by the real upgrade, then used through the
service's own engine, so these tests also prove the migrated schema serves
the service's queries.
"""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from app.data import crud
from app.data.models import DEFAULT_SITE, ClientTask, EpisodeAvailability, Job
from app.data.session import session_scope

THREE_GB = 3 * 2**30
TWELVE_GB = 3 * 2**32
EPISODE = {"slug": "attack-on-titan", "season": 1, "episode": 1, "language": "German Dub"}
NON_ASCII_EXTRA = {"note": "Fertig: 進撃の巨人 – ü", "providers": ["VOE", "Filemoon"], "n": 2}


def task_fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "name": "Attack on Titan S01E01 [German Dub]",
        **EPISODE,
        "category": "sonarr",
    }
    fields.update(overrides)
    return fields


def test_create_and_get_job(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        job_id = crud.create_job(session, source_site="s.to").id
        default_site_job_id = crud.create_job(session).id

    with session_scope(migrated_engine) as session:
        job = crud.get_job(session, job_id)
        assert job is not None
        assert (job.status, job.progress, job.downloaded_bytes) == ("queued", 0.0, 0)
        assert job.source_site == "s.to"
        assert len(job.id) == 32
        assert job.created_at.tzinfo is not None
        assert crud.get_job(session, default_site_job_id).source_site == DEFAULT_SITE
        assert crud.get_job(session, "no-such-job") is None


def add_jobs_created_minutes_apart(migrated_engine: Engine, statuses: list[str]) -> list[str]:
    """Jobs with the given statuses, created one minute apart in list order."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ids = []
    with session_scope(migrated_engine) as session:
        for minute, status in enumerate(statuses):
            job = Job(status=status, created_at=start + timedelta(minutes=minute))
            session.add(job)
            ids.append(job.id)
    return ids


def test_list_jobs_newest_first_with_limit_and_status_filter(migrated_engine: Engine) -> None:
    oldest, middle, newest = add_jobs_created_minutes_apart(
        migrated_engine, ["completed", "downloading", "completed"]
    )

    with session_scope(migrated_engine) as session:
        assert [job.id for job in crud.list_jobs(session)] == [newest, middle, oldest]
        assert [job.id for job in crud.list_jobs(session, limit=2)] == [newest, middle]
        assert [job.id for job in crud.list_jobs(session, status="completed")] == [newest, oldest]
        assert [job.id for job in crud.list_jobs(session, status="completed", limit=1)] == [newest]
        assert list(crud.list_jobs(session, status="failed")) == []


def test_update_job_applies_changes_and_bumps_updated_at(migrated_engine: Engine) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    with session_scope(migrated_engine) as session:
        job = crud.create_job(session)
        job.updated_at = long_ago
        job_id = job.id

    with session_scope(migrated_engine) as session:
        updated = crud.update_job(
            session, job_id, status="downloading", progress=42.5, message="läuft"
        )
        assert updated is not None

    with session_scope(migrated_engine) as session:
        job = crud.get_job(session, job_id)
        assert (job.status, job.progress, job.message) == ("downloading", 42.5, "läuft")
        assert job.updated_at >= job.created_at > long_ago
        assert crud.update_job(session, "no-such-job", progress=1.0) is None


def test_update_job_rejects_unknown_status_and_changes_nothing(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        job_id = crud.create_job(session).id

    with pytest.raises(ValueError, match="bogus"), session_scope(migrated_engine) as session:
        crud.update_job(session, job_id, status="bogus", progress=10.0)

    with session_scope(migrated_engine) as session:
        job = crud.get_job(session, job_id)
        assert (job.status, job.progress) == ("queued", 0.0)


def test_byte_counts_above_two_gib_round_trip(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        job_id = crud.create_job(session).id
    with session_scope(migrated_engine) as session:
        crud.update_job(session, job_id, downloaded_bytes=THREE_GB, total_bytes=TWELVE_GB)

    with Session(migrated_engine) as session:
        job = crud.get_job(session, job_id)
        assert (job.downloaded_bytes, job.total_bytes) == (THREE_GB, TWELVE_GB)
        assert job.downloaded_bytes > 2**31


def test_upsert_availability_inserts_then_updates_the_same_key(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        first = crud.upsert_availability(session, **EPISODE, available=False, provider="VOE")
        first_checked = first.checked_at
    with session_scope(migrated_engine) as session:
        crud.upsert_availability(
            session, **EPISODE, available=True, height=1080, vcodec="h264", extra=NON_ASCII_EXTRA
        )

    with Session(migrated_engine) as session:
        rows = session.exec(select(EpisodeAvailability)).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.available, row.height, row.vcodec, row.provider) == (True, 1080, "h264", None)
        assert row.site == DEFAULT_SITE
        assert row.extra == NON_ASCII_EXTRA
        assert row.checked_at >= first_checked


def test_get_availability_by_full_key_including_site(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        crud.upsert_availability(session, **EPISODE, available=True)
        crud.upsert_availability(session, **EPISODE, site="s.to", available=False)

    with session_scope(migrated_engine) as session:
        assert crud.get_availability(session, *EPISODE.values()).available is True
        assert crud.get_availability(session, *EPISODE.values(), site="s.to").available is False
        assert crud.get_availability(session, "attack-on-titan", 1, 2, "German Dub") is None
        assert crud.get_availability(session, "attack-on-titan", 1, 1, "German Sub") is None
        assert crud.get_availability(session, *EPISODE.values(), site="other.site") is None


def test_stored_availability_is_fresh_within_its_ttl(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        crud.upsert_availability(session, **EPISODE, available=True)

    with session_scope(migrated_engine) as session:
        row = crud.get_availability(session, *EPISODE.values())
        assert crud.is_fresh(row, timedelta(hours=1))
        assert not crud.is_fresh(row, timedelta(hours=1), now=row.checked_at + timedelta(hours=1))


TTL = timedelta(minutes=30)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age", "fresh"),
    [
        (timedelta(0), True),
        (TTL - timedelta(microseconds=1), True),
        (TTL, False),
        (TTL + timedelta(seconds=1), False),
    ],
)
@pytest.mark.parametrize("aware", [True, False], ids=["aware", "naive"])
def test_is_fresh_at_the_ttl_boundary(age: timedelta, fresh: bool, aware: bool) -> None:
    """Naive timestamps (as SQLite hands back from the released schema) count as UTC."""
    checked_at = NOW - age
    row = EpisodeAvailability(
        **EPISODE,
        available=True,
        checked_at=checked_at if aware else checked_at.replace(tzinfo=None),
    )

    assert crud.is_fresh(row, TTL, now=NOW) is fresh


def test_upsert_client_task_inserts_then_updates(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        crud.upsert_client_task(session, hash="a" * 40, **task_fields(job_id="job-1"))
    with session_scope(migrated_engine) as session:
        crud.upsert_client_task(
            session, hash="a" * 40, **task_fields(state="completed", save_path="/downloads")
        )

    with Session(migrated_engine) as session:
        tasks = session.exec(select(ClientTask)).all()
        assert len(tasks) == 1
        task = tasks[0]
        assert (task.state, task.save_path, task.job_id) == ("completed", "/downloads", "job-1")
        assert task.site == DEFAULT_SITE


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_upsert_client_task_rejects_unknown_state(migrated_engine: Engine, existing: bool) -> None:
    if existing:
        with session_scope(migrated_engine) as session:
            crud.upsert_client_task(session, hash="b" * 40, **task_fields())

    with pytest.raises(ValueError, match="bogus"), session_scope(migrated_engine) as session:
        crud.upsert_client_task(session, hash="b" * 40, **task_fields(state="bogus"))

    with session_scope(migrated_engine) as session:
        states = [task.state for task in crud.list_client_tasks(session)]
        assert states == (["queued"] if existing else [])


def test_list_client_tasks_in_added_order_with_category_filter(migrated_engine: Engine) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    categories = ["sonarr", "radarr", "sonarr"]
    with session_scope(migrated_engine) as session:
        for minute, category in reversed(list(enumerate(categories))):
            crud.upsert_client_task(
                session,
                hash=f"{minute:040d}",
                **task_fields(category=category, added_on=start + timedelta(minutes=minute)),
            )

    with session_scope(migrated_engine) as session:
        assert [task.hash for task in crud.list_client_tasks(session)] == [
            f"{minute:040d}" for minute in range(3)
        ]
        sonarr = crud.list_client_tasks(session, category="sonarr")
        assert [task.hash for task in sonarr] == [f"{0:040d}", f"{2:040d}"]
        assert list(crud.list_client_tasks(session, category="none")) == []


def test_delete_client_task(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        crud.upsert_client_task(session, hash="c" * 40, **task_fields())

    with session_scope(migrated_engine) as session:
        assert crud.delete_client_task(session, "c" * 40) is True
    with session_scope(migrated_engine) as session:
        assert crud.delete_client_task(session, "c" * 40) is False
        assert list(crud.list_client_tasks(session)) == []
