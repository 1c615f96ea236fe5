"""`python -m app.migrate`: the migration step of a container start.

Runs the same safe upgrade as `alembic upgrade head` and exits 0 when the
database is at head, 1 with one line on stderr when it cannot be.

When `app.head_check` can tell from the standard library alone that the
database is already at head, that is all this does: SQLAlchemy and Alembic are
imported only when there may be something to do (or an error to report).
"""

import os
import sys
from collections.abc import Callable

from app.head_check import database_at_head

LOG_FORMAT = "%(levelname)s [%(name)s] %(message)s"
INFO_LEVELS = ("info", "debug")


def main() -> int:
    revision = database_at_head()
    if revision is None:
        return upgrade_to_head()
    if os.environ.get("LOG_LEVEL", "info").strip().lower() in INFO_LEVELS:
        # LOG_FORMAT's output, written directly: importing logging would cost more than the check
        print(f"INFO [app.migrate] Database is up to date at revision {revision}", file=sys.stderr)
    return 0


def upgrade_to_head() -> int:
    return exit_code_of(run_full_upgrade)


def run_full_upgrade() -> None:
    import logging

    from app.config import get_settings
    from app.db.upgrade import upgrade_database

    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    upgrade_database(settings)


def exit_code_of(action: Callable[[], None]) -> int:
    """Run `action`; a settings or migration error becomes one stderr line and exit code 1."""
    from app.config import ConfigError
    from app.db.errors import MigrationError

    try:
        action()
    except (ConfigError, MigrationError) as exc:
        print(f"anibridge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
