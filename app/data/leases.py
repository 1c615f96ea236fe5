"""Which service runs which job: an owner and a lease, renewed by a heartbeat.

Several replicas share one PostgreSQL database (docs/replicas.md). A job is
owned by the service instance (INSTANCE_ID) that last created or updated it,
and its claim holds until `lease_expires_at`. Each service renews the leases
of its unfinished jobs every HEARTBEAT_INTERVAL; a job whose lease ran out
has lost its service (stopped, killed, or cut off from the database), and
any service may fail it. A start fails the jobs its own earlier run left
(same INSTANCE_ID) and those whose lease ran out, never a job another
running replica holds. Jobs without an owner were created by a release
without leases, which may still be running them during a rolling upgrade: no
start fails them on PostgreSQL (the contract revision of the next release
does, docs/replicas.md). A SQLite file serves one service, so there a start
fails every unfinished job, as every release did.

Timestamps are the services' UTC clocks, like `created_at`: the lease
tolerates clocks that differ by less than LEASE minus HEARTBEAT_INTERVAL.
"""

import logging
import threading
from datetime import datetime, timedelta
from types import TracebackType

from sqlalchemy import ColumnElement, Engine, ScalarSelect, or_, select, true, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app.data.models import Job, utc_now
from app.data.session import session_scope

LEASE = timedelta(seconds=60)
HEARTBEAT_INTERVAL = LEASE / 3
"""Two beats may fail before the lease runs out."""
UNFINISHED_JOB_STATUSES = ("queued", "downloading")
INTERRUPTED_MESSAGE = "interrupted by a restart"

log = logging.getLogger(__name__)


def claim(job: Job, owner: str, now: datetime) -> None:
    """Make `owner` the job's service, with a fresh lease."""
    job.owner, job.lease_expires_at = owner, now + LEASE


def renew_leases(session: Session, owner: str, now: datetime) -> int:
    """Extend the lease of every unfinished job `owner` holds; one UPDATE."""
    mine = unlocked_jobs(col(Job.owner) == owner, col(Job.status).in_(UNFINISHED_JOB_STATUSES))
    statement = update(Job).where(col(Job.id).in_(mine)).values(lease_expires_at=now + LEASE)
    return session.exec(statement).rowcount


def fail_expired_jobs(session: Session, now: datetime) -> int:
    """Fail the unfinished jobs whose owner stopped renewing its lease."""
    return fail_unfinished_jobs(session, col(Job.lease_expires_at) < now, now)


def fail_jobs_left_at_start(
    session: Session, owner: str, *, sole_service: bool, now: datetime | None = None
) -> int:
    """Fail the jobs no running service holds, as a service starts.

    `sole_service` (SQLite): every unfinished job is this service's earlier
    run's. Otherwise the jobs of `owner` (its earlier run) and expired ones.
    """
    now = now or utc_now()
    if sole_service:
        return fail_unfinished_jobs(session, true(), now)
    left = or_(col(Job.owner) == owner, col(Job.lease_expires_at) < now)
    return fail_unfinished_jobs(session, left, now)


def fail_unfinished_jobs(session: Session, which: ColumnElement[bool], now: datetime) -> int:
    left = unlocked_jobs(col(Job.status).in_(UNFINISHED_JOB_STATUSES), which)
    statement = (
        update(Job)
        .where(col(Job.id).in_(left))
        .values(status="failed", message=INTERRUPTED_MESSAGE, updated_at=now)
    )
    return session.exec(statement).rowcount


def unlocked_jobs(*conditions: ColumnElement[bool]) -> ScalarSelect:
    """The ids of the jobs that meet `conditions` and that no other session holds locked.

    These UPDATEs change many rows in whatever order the table gives them; a
    batched fill of `job` (docs/replicas.md) changes many rows too, so each
    waiting for a row the other holds would be a deadlock, and PostgreSQL
    would end one of them: the migration, as the rolling test saw. A job held
    by another session is skipped instead (SKIP LOCKED; SQLite has one writer
    and ignores it): its lease is renewed by the next beat, which the lease
    outlives, and a job being written is not one its service has left.
    """
    return select(Job.id).where(*conditions).with_for_update(skip_locked=True).scalar_subquery()


class Heartbeat:
    """A thread that renews `owner`'s leases and fails expired jobs, every `interval`.

    A beat that fails (the database unreachable for a while) is logged and
    the next one tries again: the lease outlives two missed beats.
    """

    def __init__(self, engine: Engine, owner: str, interval: timedelta = HEARTBEAT_INTERVAL):
        self.engine, self.owner, self.interval = engine, owner, interval
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="job-lease-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self.thread.join()

    def run(self) -> None:
        while not self.stopping.wait(self.interval.total_seconds()):
            try:
                self.beat(utc_now())
            except DBAPIError as exc:
                log.warning("Job lease heartbeat failed, trying again: %s", first_line(exc))

    def beat(self, now: datetime) -> tuple[int, int]:
        """(leases renewed, expired jobs failed), in one transaction."""
        with session_scope(self.engine) as session:
            renewed = renew_leases(session, self.owner, now)
            expired = fail_expired_jobs(session, now)
        if expired:
            log.info("Marked %d jobs whose service stopped renewing them as failed", expired)
        return renewed, expired


def first_line(error: DBAPIError) -> str:
    """The driver's first line: its message names the server, never the password."""
    return (str(error.orig).strip().splitlines() or [type(error).__name__])[0]
