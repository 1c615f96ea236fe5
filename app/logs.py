"""One log format for every entry point: timestamp with its UTC offset, level, logger, message.

`alembic.ini` spells out the same format for the plain `alembic` command, and
the container's entrypoint stamps its own lines the same way.
"""

LOG_FORMAT = "%(asctime)s %(levelname)-5s [%(name)s] %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def configure_logging(level: str) -> None:
    """Send every logger (uvicorn's too) to stderr in LOG_FORMAT."""
    import logging

    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)
