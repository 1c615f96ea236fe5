"""AniBridge service state: FastAPI + SQLModel with Alembic-managed schema."""

from functools import cache


@cache
def app_version() -> str:
    """The installed release's version (pyproject.toml's), as pip recorded it.

    importlib.metadata is imported here, not at the top: every `app.*` import,
    the container's stdlib-only start-up check included, would pay ~20 ms for it.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anibridge")
    except PackageNotFoundError:
        return "unknown"
