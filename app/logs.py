"""One log format for every entry point: timestamp with its UTC offset, level, logger, message.

`alembic.ini` spells out the same format for the plain `alembic` command.
Importing this module costs no more than `time`: the container's fast at-head
path writes its one line with `log_line` and never imports logging.
"""

import time

LOG_FORMAT = "%(asctime)s %(levelname)-5s [%(name)s] %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def configure_logging(level: str) -> None:
    """Send every logger (uvicorn's too) to stderr in LOG_FORMAT."""
    import logging

    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, datefmt=DATE_FORMAT, force=True)


def log_line(level: str, logger: str, message: str) -> str:
    """A line exactly as LOG_FORMAT renders it."""
    return f"{time.strftime(DATE_FORMAT)} {level:<5} [{logger}] {message}"
