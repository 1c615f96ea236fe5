"""`anibridge migrate` and `python -m app.migrate`: upgrade the database to head and exit.

Runs the same safe upgrade as `alembic upgrade head` and exits 0 when the
database is at head, 1 with one line on stderr when it cannot be.
"""

import sys
from collections.abc import Callable

LOG_FORMAT = "%(levelname)s [%(name)s] %(message)s"


def main() -> int:
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
