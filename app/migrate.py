"""`anibridge migrate` and `python -m app.migrate`: upgrade the database to head and exit.

Runs the same safe upgrade as `alembic upgrade head` and exits 0 when the
database is at head, 1 with one line on stderr when it cannot be.
"""

import argparse
import sys
from collections.abc import Callable, Sequence


def parse_args(argv: Sequence[str]) -> None:
    """`--help` and bad arguments exit here, before anything is opened."""
    argparse.ArgumentParser(
        prog="python -m app.migrate",
        description="Upgrade the configured database to head, as `alembic upgrade head` does; "
        "exit 0 when it is at head, 1 with one line on stderr when it cannot be.",
        epilog="Settings come from the environment (DATABASE_URL, DATA_DIR, ...; see README).",
    ).parse_args(argv)


def main(argv: Sequence[str] = ()) -> int:
    parse_args(argv)
    return exit_code_of(run_full_upgrade)


def run_full_upgrade() -> None:
    from app.config import get_settings
    from app.logs import configure_logging
    from app.migration.guarded_run import upgrade_database

    settings = get_settings()
    configure_logging(settings.log_level)
    upgrade_database(settings)


def exit_code_of(action: Callable[[], int | None]) -> int:
    """Run `action` and return its exit code (0 when it gives none); a settings, Alembic or
    database error becomes one stderr line and exit 1.

    With LOG_LEVEL=debug the traceback is logged before that line.
    """
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    from app.config import ConfigError
    from app.migration.errors import describe_database_error

    try:
        return action() or 0
    except (ConfigError, CommandError) as exc:
        return report_failure(str(exc))
    except DBAPIError as exc:
        return report_failure(describe_database_error(exc, None))


def report_failure(message: str) -> int:
    import logging

    logging.getLogger("app").debug("Failed", exc_info=True)
    print(f"anibridge: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
