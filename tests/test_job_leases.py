"""Job owners and leases (app/data/leases.py), on a migrated SQLite and PostgreSQL database.

A start fails the jobs its own earlier run left and those whose lease ran
out, and never a job another replica holds or one a release without leases
created (docs/replicas.md, "Whose jobs a start fails"). On SQLite, one
service's own file, a start fails every unfinished job.
"""

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from app.data import crud
from app.data.leases import (
    INTERRUPTED_MESSAGE,
    LEASE,
    Heartbeat,
    fail_expired_jobs,
    fail_jobs_left_at_start,
    renew_leases,
)
from app.data.models import Job
from app.data.session import session_scope
from app.engine import make_engine

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ME, OTHER = "replica-a", "replica-b"
UNFINISHED = ("queued", "downloading")
FINISHED = ("completed", "failed", "cancelled")


def add_job(
    migrated_engine: Engine, status: str, owner: str | None, lease_left: timedelta | None
) -> str:
    """A job of `owner` whose lease runs out `lease_left` after NOW (None: no lease)."""
    lease = None if lease_left is None else NOW + lease_left
    with session_scope(migrated_engine) as session:
        job = Job(status=status, owner=owner, lease_expires_at=lease)
        session.add(job)
    return job.id


def states(migrated_engine: Engine, ids: list[str]) -> list[tuple[str, str | None]]:
    with session_scope(migrated_engine) as session:
        jobs = [crud.get_job(session, job_id) for job_id in ids]
        return [(job.status, job.message) for job in jobs]


def lease_of(migrated_engine: Engine, job_id: str) -> datetime | None:
    with session_scope(migrated_engine) as session:
        lease = crud.get_job(session, job_id).lease_expires_at
    # SQLite hands timestamps back naive; they were written as UTC.
    return lease if lease is None or lease.tzinfo else lease.replace(tzinfo=UTC)


def fail_at_start(migrated_engine: Engine, *, sole_service: bool) -> int:
    with session_scope(migrated_engine) as session:
        return fail_jobs_left_at_start(session, ME, sole_service=sole_service, now=NOW)


FAILED = ("failed", INTERRUPTED_MESSAGE)


def test_a_start_fails_its_own_and_expired_jobs_only(migrated_engine: Engine) -> None:
    live = timedelta(seconds=30)
    mine = [add_job(migrated_engine, status, ME, live) for status in UNFINISHED]
    expired = [
        add_job(migrated_engine, status, OTHER, -timedelta(seconds=1)) for status in UNFINISHED
    ]
    held = [add_job(migrated_engine, status, OTHER, live) for status in UNFINISHED]
    unowned = [add_job(migrated_engine, status, None, None) for status in UNFINISHED]
    finished = [add_job(migrated_engine, status, ME, -live) for status in FINISHED]

    assert fail_at_start(migrated_engine, sole_service=False) == 4

    assert states(migrated_engine, mine + expired) == [FAILED] * 4
    assert states(migrated_engine, held + unowned) == [(status, None) for status in UNFINISHED * 2]
    assert states(migrated_engine, finished) == [(status, None) for status in FINISHED]
    assert fail_at_start(migrated_engine, sole_service=False) == 0


def test_a_sole_service_start_fails_every_unfinished_job(migrated_engine: Engine) -> None:
    unfinished = [
        add_job(migrated_engine, "downloading", owner, None) for owner in (ME, OTHER, None)
    ]
    finished = add_job(migrated_engine, "completed", None, None)

    assert fail_at_start(migrated_engine, sole_service=True) == 3

    assert states(migrated_engine, unfinished) == [FAILED] * 3
    assert states(migrated_engine, [finished]) == [("completed", None)]


def test_a_beat_renews_my_unfinished_leases_and_fails_expired_jobs(migrated_engine: Engine) -> None:
    mine = add_job(migrated_engine, "downloading", ME, timedelta(seconds=5))
    my_finished = add_job(migrated_engine, "completed", ME, timedelta(seconds=5))
    others = add_job(migrated_engine, "queued", OTHER, timedelta(seconds=5))
    expired = add_job(migrated_engine, "downloading", OTHER, -timedelta(seconds=5))
    unowned = add_job(migrated_engine, "downloading", None, None)

    assert Heartbeat(migrated_engine, ME).beat(NOW) == (1, 1)

    assert lease_of(migrated_engine, mine) == NOW + LEASE
    assert (
        lease_of(migrated_engine, my_finished)
        == lease_of(migrated_engine, others)
        == NOW + timedelta(seconds=5)
    )
    assert states(migrated_engine, [mine, others, unowned]) == [
        ("downloading", None),
        ("queued", None),
        ("downloading", None),
    ]
    assert states(migrated_engine, [expired]) == [FAILED]


def test_a_beat_skips_the_jobs_another_session_holds_instead_of_waiting(
    migrated_engine: Engine,
) -> None:
    """A batched fill holds the rows of its batch; a beat waiting for them, while it holds
    rows the fill reaches next, would be a deadlock (the rolling test met one)."""
    if migrated_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: no row is held by another session")
    held, free = (add_job(migrated_engine, "downloading", ME, timedelta(seconds=5)) for _ in "ab")
    expired = add_job(migrated_engine, "downloading", OTHER, -timedelta(seconds=5))
    with migrated_engine.connect() as other:
        other.execute(text("SET lock_timeout = '5s'"))
        locked = "SELECT id FROM job WHERE id IN (:a, :b) FOR UPDATE"
        other.execute(text(locked), {"a": held, "b": expired})
        with session_scope(migrated_engine) as session:
            session.exec(text("SET LOCAL lock_timeout = '1s'"))
            renewed = renew_leases(session, ME, NOW)
            failed = fail_expired_jobs(session, NOW)
        other.rollback()

    assert (renewed, failed) == (1, 0)
    assert lease_of(migrated_engine, free) == NOW + LEASE
    assert lease_of(migrated_engine, held) == NOW + timedelta(seconds=5)


def test_a_replica_that_stops_beating_loses_its_jobs_to_one_that_beats(
    migrated_engine: Engine,
) -> None:
    job = add_job(migrated_engine, "downloading", OTHER, LEASE)
    survivor = Heartbeat(migrated_engine, ME)

    assert survivor.beat(NOW + LEASE / 2) == (0, 0)
    assert states(migrated_engine, [job]) == [("downloading", None)]
    assert survivor.beat(NOW + LEASE + timedelta(seconds=1)) == (0, 1)
    assert states(migrated_engine, [job]) == [FAILED]


def test_creating_or_updating_a_job_claims_it(migrated_engine: Engine) -> None:
    with session_scope(migrated_engine) as session:
        job = crud.create_job(session, owner=ME)
        assert job.lease_expires_at == job.created_at + LEASE
    with session_scope(migrated_engine) as session:
        updated = crud.update_job(session, job.id, owner=OTHER, status="downloading")
        assert (updated.owner, updated.lease_expires_at) == (OTHER, updated.updated_at + LEASE)
    with session_scope(migrated_engine) as session:
        assert crud.get_job(session, job.id).owner == OTHER


def test_the_heartbeat_thread_beats_until_stopped(migrated_engine: Engine) -> None:
    job = add_job(migrated_engine, "downloading", ME, -timedelta(days=1))
    beats = threading.Semaphore(0)

    class Counted(Heartbeat):
        def beat(self, now: datetime) -> tuple[int, int]:
            result = super().beat(now)
            beats.release()
            return result

    with Counted(migrated_engine, ME, interval=timedelta(milliseconds=10)) as heartbeat:
        assert beats.acquire(timeout=10) and beats.acquire(timeout=10)
    assert not heartbeat.thread.is_alive()
    assert lease_of(migrated_engine, job) > datetime.now(UTC)


def test_a_failed_beat_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = make_engine(make_url("postgresql+psycopg://nobody:s3cret@127.0.0.1:1/none"))

    class Twice(Heartbeat):
        attempts = 0

        def beat(self, now: datetime) -> tuple[int, int]:
            self.attempts += 1
            if self.attempts == 2:
                self.stopping.set()
            return super().beat(now)

    with caplog.at_level(logging.WARNING, logger="app.data.leases"):
        heartbeat = Twice(unreachable, ME, interval=timedelta(milliseconds=10))
        with heartbeat:
            heartbeat.thread.join(timeout=30)
    unreachable.dispose()
    assert heartbeat.attempts == 2
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2, warnings
    assert all(w.startswith("Job lease heartbeat failed, trying again: ") for w in warnings)
    assert not any("s3cret" in w or "\n" in w for w in warnings), warnings
