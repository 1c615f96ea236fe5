"""The JSON API over jobs, episode availability and client tasks."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, BeforeValidator, Field, StrictBool
from sqlmodel import Session

from app.api_contract import NOT_FOUND, UNPARSABLE_BODY, keep_http_contract
from app.api_inputs import (
    INT32_MAX,
    PATH_SEGMENT,
    FiniteFloat,
    Instant,
    Int32,
    Int64,
    NonEmptyText,
    StorableJsonObject,
    Text,
    require_decimal_integer,
)
from app.data import crud
from app.data.models import DEFAULT_SITE, ClientTask, EpisodeAvailability, Job

router = APIRouter()

# Path parameters hold no "/" (it would split the path) and no NUL; numbers in
# the URL are plain decimal digits.
Segment = Annotated[str, Path(pattern=PATH_SEGMENT)]
EpisodeNumber = Annotated[int, Path(ge=0, le=INT32_MAX), BeforeValidator(require_decimal_integer)]
# A freshness window must fit in a `timedelta`.
MAX_TTL_S = timedelta.max // timedelta(seconds=1)

JobStatus = Literal["queued", "downloading", "completed", "failed", "cancelled"]
TaskState = Literal["queued", "downloading", "paused", "completed", "error"]


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session
        session.commit()


# Committed before the response is sent ("function" scope): a client told
# 200 can read its write back at once, and a failed commit is never told 200.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def instance_id(request: Request) -> str:
    """This service's INSTANCE_ID: the owner of the jobs it creates or updates."""
    return request.app.state.instance_id


def not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found")


def mount_api(app: FastAPI) -> None:
    """Serve the routes on `app`, with the error handling and schema they promise."""
    app.include_router(router)
    keep_http_contract(app, router.routes)


@router.get("/health")
def health(request: Request) -> dict[str, Any]:
    return {
        "status": "ok",
        "database": request.app.state.engine.dialect.name,
        "revision": request.app.state.schema_revision,
    }


class JobCreate(BaseModel):
    source_site: NonEmptyText = DEFAULT_SITE


def omissible() -> Any:
    """A field that may be left out but not set to null (its column is NOT NULL).

    The default `None` only marks the field unset; the schema shows no default.
    """
    return Field(default=None, json_schema_extra=lambda schema: schema.pop("default"))


Progress = Annotated[FiniteFloat, Field(ge=0, le=100)]
Speed = Annotated[FiniteFloat, Field(ge=0)]


class JobUpdate(BaseModel):
    """Fields to change; absent ones stay. `status`, `progress` and
    `downloaded_bytes` are NOT NULL columns: they may be left out, not nulled."""

    status: JobStatus = omissible()
    progress: Progress = omissible()
    downloaded_bytes: Int64 = omissible()
    total_bytes: Int64 | None = None
    speed: Speed | None = None
    eta: Int32 | None = None
    message: Text | None = None
    result_path: Text | None = None


@router.post("/jobs", status_code=201, responses=UNPARSABLE_BODY)
def create_job(body: JobCreate, session: SessionDep, request: Request) -> Job:
    return crud.create_job(session, source_site=body.source_site, owner=instance_id(request))


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000), BeforeValidator(require_decimal_integer)] = 100,
) -> list[Job]:
    return list(crud.list_jobs(session, status=status, limit=limit))


@router.get("/jobs/{job_id}", responses=NOT_FOUND)
def get_job(job_id: Segment, session: SessionDep) -> Job:
    job = crud.get_job(session, job_id)
    if job is None:
        raise not_found("job")
    return job


@router.patch("/jobs/{job_id}", responses={**NOT_FOUND, **UNPARSABLE_BODY})
def update_job(job_id: Segment, body: JobUpdate, session: SessionDep, request: Request) -> Job:
    changes = body.model_dump(exclude_unset=True)
    job = crud.update_job(session, job_id, owner=instance_id(request), **changes)
    if job is None:
        raise not_found("job")
    return job


class AvailabilityIn(BaseModel):
    available: StrictBool
    height: Int32 | None = None
    vcodec: Text | None = None
    provider: Text | None = None
    extra: StorableJsonObject | None = None


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


@router.put(EPISODE_PATH, responses={**NOT_FOUND, **UNPARSABLE_BODY})
def put_availability(
    site: Segment,
    slug: Segment,
    season: EpisodeNumber,
    episode: EpisodeNumber,
    language: Segment,
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


@router.get(EPISODE_PATH, responses=NOT_FOUND)
def get_availability(
    site: Segment,
    slug: Segment,
    season: EpisodeNumber,
    episode: EpisodeNumber,
    language: Segment,
    session: SessionDep,
    ttl: Annotated[
        int,
        Query(ge=0, le=MAX_TTL_S, description="freshness window in seconds"),
        BeforeValidator(require_decimal_integer),
    ] = DEFAULT_TTL_S,
) -> AvailabilityOut:
    row = crud.get_availability(session, slug, season, episode, language, site)
    if row is None:
        raise not_found("availability")
    return availability_out(row, ttl)


class ClientTaskIn(BaseModel):
    name: NonEmptyText
    slug: NonEmptyText
    season: Int32
    episode: Int32
    language: NonEmptyText
    site: Text = DEFAULT_SITE
    job_id: Text | None = None
    save_path: Text | None = None
    category: Text | None = None
    state: TaskState = "queued"
    completion_on: Instant | None = None


@router.put("/client-tasks/{hash}", responses={**NOT_FOUND, **UNPARSABLE_BODY})
def put_client_task(hash: Segment, body: ClientTaskIn, session: SessionDep) -> ClientTask:
    return crud.upsert_client_task(session, hash=hash, **body.model_dump())


@router.get("/client-tasks")
def list_client_tasks(
    session: SessionDep, category: Annotated[Text | None, Query()] = None
) -> list[ClientTask]:
    return list(crud.list_client_tasks(session, category=category))


@router.delete("/client-tasks/{hash}", status_code=204, responses=NOT_FOUND)
def delete_client_task(hash: Segment, session: SessionDep) -> Response:
    if not crud.delete_client_task(session, hash):
        raise not_found("client task")
    return Response(status_code=204)
