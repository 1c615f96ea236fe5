"""`python -m app.migrate`: the migration step of a container start.

Runs the same safe upgrade as `alembic upgrade head` and exits 0 when the
database is at head, 1 with one line on stderr when it cannot be.
"""

import logging
import sys

from app.config import ConfigError, get_settings
from app.db.errors import MigrationError


def main() -> int:
    try:
        settings = get_settings()
        logging.basicConfig(
            level=settings.log_level.upper(), format="%(levelname)s [%(name)s] %(message)s"
        )
        from app.db.upgrade import upgrade_database

        upgrade_database(settings)
    except (ConfigError, MigrationError) as exc:
        print(f"anibridge: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
