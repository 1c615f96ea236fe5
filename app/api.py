"""The JSON API over jobs, episode availability and client tasks."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlmodel import Session

from app.db import crud
from app.db.models import DEFAULT_SITE, ClientTask, EpisodeAvailability, Job

router = APIRouter()

# The columns' ranges: INTEGER is 32-bit on PostgreSQL, byte counts are BIGINT.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
EpisodeNumber = Annotated[int, Path(ge=0, le=INT32_MAX)]

JobStatus = Literal["queued", "downloading", "completed", "failed", "cancelled"]
TaskState = Literal["queued", "downloading", "paused", "completed", "error"]


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session
        session.commit()


SessionDep = Annotated[Session, Depends(get_session)]


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found")


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    return {
        "status": "ok",
        "database": request.app.state.engine.dialect.name,
        "revision": request.app.state.schema_revision,
    }


class JobCreate(BaseModel):
    source_site: str = Field(default=DEFAULT_SITE, min_length=1)


class JobUpdate(BaseModel):
    status: JobStatus | None = None
    progress: float | None = Field(default=None, ge=0, le=100)
    downloaded_bytes: int | None = Field(default=None, ge=0, le=INT64_MAX)
    total_bytes: int | None = Field(default=None, ge=0, le=INT64_MAX)
    speed: float | None = Field(default=None, ge=0)
    eta: int | None = Field(default=None, ge=0, le=INT32_MAX)
    message: str | None = None
    result_path: str | None = None


@router.post("/jobs", status_code=201)
def create_job(body: JobCreate, session: SessionDep) -> Job:
    return crud.create_job(session, source_site=body.source_site)


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Job]:
    return list(crud.list_jobs(session, status=status, limit=limit))


@router.get("/jobs/{job_id}")
def get_job(job_id: str, session: SessionDep) -> Job:
    job = crud.get_job(session, job_id)
    if job is None:
        raise not_found("job")
    return job


@router.patch("/jobs/{job_id}")
def update_job(job_id: str, body: JobUpdate, session: SessionDep) -> Job:
    job = crud.update_job(session, job_id, **body.model_dump(exclude_unset=True))
    if job is None:
        raise not_found("job")
    return job


class AvailabilityIn(BaseModel):
    available: bool
    height: int | None = Field(default=None, ge=0, le=INT32_MAX)
    vcodec: str | None = None
    provider: str | None = None
    extra: dict[str, Any] | None = None


class AvailabilityOut(BaseModel):
    slug: str
    season: int
    episode: int
    language: str
    site: str
    available: bool
    height: int | None
    vcodec: str | None
    provider: str | None
    checked_at: datetime
    extra: dict[str, Any] | None
    fresh: bool


DEFAULT_TTL_S = 3600
EPISODE_PATH = "/availability/{site}/{slug}/{season}/{episode}/{language}"


def availability_out(row: EpisodeAvailability, ttl_s: int) -> AvailabilityOut:
    fresh = crud.is_fresh(row, timedelta(seconds=ttl_s))
    return AvailabilityOut(**row.model_dump(), fresh=fresh)


@router.put(EPISODE_PATH)
def put_availability(
    site: str,
    slug: str,
    season: EpisodeNumber,
    episode: EpisodeNumber,
    language: str,
    body: AvailabilityIn,
    session: SessionDep,
) -> AvailabilityOut:
    row = crud.upsert_availability(
        session,
        slug=slug,
        season=season,
        episode=episode,
        language=language,
        site=site,
        **body.model_dump(),
    )
    return availability_out(row, DEFAULT_TTL_S)


@router.get(EPISODE_PATH)
def get_availability(
    site: str,
    slug: str,
    season: EpisodeNumber,
    episode: EpisodeNumber,
    language: str,
    session: SessionDep,
    ttl: Annotated[int, Query(ge=0, description="freshness window in seconds")] = DEFAULT_TTL_S,
) -> AvailabilityOut:
    row = crud.get_availability(session, slug, season, episode, language, site)
    if row is None:
        raise not_found("availability")
    return availability_out(row, ttl)


class ClientTaskIn(BaseModel):
    name: str = Field(min_length=1)
    slug: str = Field(min_length=1)
    season: int = Field(ge=0, le=INT32_MAX)
    episode: int = Field(ge=0, le=INT32_MAX)
    language: str = Field(min_length=1)
    site: str = DEFAULT_SITE
    job_id: str | None = None
    save_path: str | None = None
    category: str | None = None
    state: TaskState = "queued"
    completion_on: datetime | None = None


@router.put("/client-tasks/{hash}")
def put_client_task(hash: str, body: ClientTaskIn, session: SessionDep) -> ClientTask:
    return crud.upsert_client_task(session, hash=hash, **body.model_dump())


@router.get("/client-tasks")
def list_client_tasks(session: SessionDep, category: str | None = None) -> list[ClientTask]:
    return list(crud.list_client_tasks(session, category=category))


@router.delete("/client-tasks/{hash}", status_code=204)
def delete_client_task(hash: str, session: SessionDep) -> Response:
    if not crud.delete_client_task(session, hash):
        raise not_found("client task")
    return Response(status_code=204)
