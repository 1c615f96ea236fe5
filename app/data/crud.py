"""Data access used by the service: plain functions over a Session."""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, col, select

from app.data.leases import claim
from app.data.models import DEFAULT_SITE, ClientTask, EpisodeAvailability, Job, utc_now

JOB_STATUSES = ("queued", "downloading", "completed", "failed", "cancelled")
CLIENT_TASK_STATES = ("queued", "downloading", "paused", "completed", "error")

# Both engines take INSERT ... ON CONFLICT DO UPDATE, each through its own construct.
UPSERT_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
RowModel = TypeVar("RowModel", bound=SQLModel)


def create_job(
    session: Session, *, source_site: str = DEFAULT_SITE, owner: str | None = None
) -> Job:
    """A queued job; `owner` (a service's INSTANCE_ID) claims it (app.data.leases)."""
    job = Job(source_site=source_site)
    if owner is not None:
        claim(job, owner, job.created_at)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, *, status: str | None = None, limit: int = 100) -> Sequence[Job]:
    query = select(Job).order_by(col(Job.created_at).desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    return session.exec(query).all()


def update_job(
    session: Session, job_id: str, *, owner: str | None = None, **changes: Any
) -> Job | None:
    """Apply progress/status changes to a job and bump `updated_at`.

    `owner`: the service the update came through claims the job, since its
    caller is working on it (app.data.leases).
    """
    job = session.get(Job, job_id)
    if job is None:
        return None
    if "status" in changes and changes["status"] not in JOB_STATUSES:
        raise ValueError(f"unknown job status {changes['status']!r}")
    for name, value in changes.items():
        setattr(job, name, value)
    job.updated_at = utc_now()
    if owner is not None:
        claim(job, owner, job.updated_at)
    session.add(job)
    session.flush()
    return job


def upsert_availability(
    session: Session,
    *,
    slug: str,
    season: int,
    episode: int,
    language: str,
    available: bool,
    site: str = DEFAULT_SITE,
    height: int | None = None,
    vcodec: str | None = None,
    provider: str | None = None,
    extra: dict[str, Any] | None = None,
) -> EpisodeAvailability:
    row = EpisodeAvailability(
        slug=slug,
        season=season,
        episode=episode,
        language=language,
        site=site,
        available=available,
        height=height,
        vcodec=vcodec,
        provider=provider,
        extra=extra,
        checked_at=utc_now(),
    )
    probed = ("available", "height", "vcodec", "provider", "extra", "checked_at")
    return upsert(session, row, update=probed)


def get_availability(
    session: Session, slug: str, season: int, episode: int, language: str, site: str = DEFAULT_SITE
) -> EpisodeAvailability | None:
    return session.get(EpisodeAvailability, (slug, season, episode, language, site))


def is_fresh(row: EpisodeAvailability, ttl: timedelta, *, now: datetime | None = None) -> bool:
    """Whether a cached probe result is younger than `ttl`.

    SQLite hands timestamps back naive; they were written as UTC.
    """
    checked_at = row.checked_at
    if checked_at.tzinfo is None:
        checked_at = checked_at.replace(tzinfo=UTC)
    return (now or utc_now()) - checked_at < ttl


def upsert_client_task(session: Session, *, hash: str, **fields: Any) -> ClientTask:
    """Add a task, or change the given fields of the task with this hash."""
    task = ClientTask(hash=hash, **fields)
    if task.state not in CLIENT_TASK_STATES:
        raise ValueError(f"unknown client task state {task.state!r}")
    return upsert(session, task, update=fields)


def upsert(session: Session, row: RowModel, *, update: Iterable[str]) -> RowModel:
    """Insert `row`; where its primary key exists already, set the `update` columns instead.

    One INSERT ... ON CONFLICT DO UPDATE statement: two requests writing the
    same new key at once cannot both try to insert it (a read-then-insert
    fails the second one with a unique violation).
    """
    table = type(row).__table__
    insert = UPSERT_INSERT[session.get_bind().dialect.name]
    statement = insert(table).values(row.model_dump())
    statement = statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: statement.excluded[name] for name in update},
    )
    session.exec(statement)
    key = tuple(getattr(row, column.name) for column in table.primary_key.columns)
    return session.get(type(row), key, populate_existing=True)


def list_client_tasks(session: Session, *, category: str | None = None) -> Sequence[ClientTask]:
    query = select(ClientTask).order_by(col(ClientTask.added_on))
    if category is not None:
        query = query.where(ClientTask.category == category)
    return session.exec(query).all()


def delete_client_task(session: Session, hash: str) -> bool:
    task = session.get(ClientTask, hash)
    if task is None:
        return False
    session.delete(task)
    session.flush()
    return True
