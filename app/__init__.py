"""AniBridge service state: FastAPI + SQLModel with Alembic-managed schema."""

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def app_version() -> str:
    """The installed release's version (pyproject.toml's), as pip recorded it."""
    try:
        return version("anibridge")
    except PackageNotFoundError:
        return "unknown"
