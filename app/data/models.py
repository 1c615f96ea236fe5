"""The service's tables.

`Job`, `EpisodeAvailability` and `ClientTask` match, column for column, the
schema the last release created with `create_all` (see
tests/data/legacy_sql/multi_site.sql), but for the job's owner and lease
(app.data.leases), added since. Defaults are Python-side, as they were
then. `StrmUrlMapping` is dormant: the table exists, nothing uses it yet.

Import `metadata` from here (not from app.data.metadata) wherever the tables
must be on it: this module is what registers them.
"""

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import JSON, BigInteger, Column, Index, Integer
from sqlmodel import Field, SQLModel

from app.data.metadata import metadata

DEFAULT_SITE = "aniworld.to"


# Byte counts pass 2**31 (a 3 GB episode): BIGINT on PostgreSQL. SQLite keeps
# the released INTEGER, which already stores 64 bits.
ByteCount = BigInteger().with_variant(Integer(), "sqlite")


class AppModel(SQLModel):
    """Base class of every table model: binds it to the shared metadata."""

    metadata = metadata


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid4().hex


class Job(AppModel, table=True):
    id: str = Field(default_factory=new_job_id, primary_key=True, index=True)
    status: str = Field(default="queued", index=True)
    progress: float = 0.0
    downloaded_bytes: int = Field(default=0, sa_type=ByteCount)
    total_bytes: int | None = Field(default=None, sa_type=ByteCount)
    speed: float | None = None
    eta: int | None = None
    message: str | None = None
    result_path: str | None = None
    source_site: str | None = Field(default=DEFAULT_SITE, index=True)
    created_at: datetime = Field(default_factory=utc_now, index=True)
    updated_at: datetime = Field(default_factory=utc_now, index=True)
    owner: str | None = None
    """The service instance (INSTANCE_ID) running the job; None for jobs of earlier releases."""
    lease_expires_at: datetime | None = None
    """Until when the owner's claim holds; its heartbeat renews it (app.data.leases)."""


class EpisodeAvailability(AppModel, table=True):
    slug: str = Field(primary_key=True)
    season: int = Field(primary_key=True)
    episode: int = Field(primary_key=True)
    language: str = Field(primary_key=True)
    site: str = Field(default=DEFAULT_SITE, primary_key=True)
    available: bool
    height: int | None = None
    vcodec: str | None = None
    provider: str | None = None
    checked_at: datetime = Field(default_factory=utc_now, index=True)
    extra: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class ClientTask(AppModel, table=True):
    hash: str = Field(primary_key=True, index=True)
    name: str
    slug: str
    season: int
    episode: int
    language: str
    site: str | None = Field(default=DEFAULT_SITE, index=True)
    job_id: str | None = Field(default=None, index=True)
    save_path: str | None = None
    category: str | None = None
    added_on: datetime = Field(default_factory=utc_now, index=True)
    completion_on: datetime | None = None
    state: str = Field(default="queued", index=True)


class StrmUrlMapping(AppModel, table=True):
    """Which provider URL a `.strm` file holds, and which episode it plays.

    Dormant: kept so a future refresh of expired URLs has the data it needs.
    See docs/strm-url-mapping.md.
    """

    __tablename__ = "strm_url_mapping"
    __table_args__ = (
        Index(
            "ix_strm_url_mapping_episode_identity",
            "slug",
            "season",
            "episode",
            "language",
            "site",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    strm_path: str = Field(unique=True)
    resolved_url: str
    resolved_at: datetime = Field(default_factory=utc_now, index=True)
    slug: str
    season: int
    episode: int
    language: str
    site: str = Field(default=DEFAULT_SITE)
    provider_used: str | None = None
