"""Errors an operator can act on.

They subclass Alembic's `CommandError`, so the plain `alembic` command line
prints them as one `FAILED: ...` line and exits non-zero (255) instead of
showing a traceback; `anibridge` and `python -m app.migrate` exit 1.
"""

from alembic.util import CommandError


class MigrationError(CommandError):
    """The database cannot be migrated as it is; the message says what to do."""


class DatabaseNewerThanCodeError(MigrationError):
    pass


class UnknownSchemaError(MigrationError):
    pass


class MigrationLockTimeoutError(MigrationError):
    pass


class BackupError(MigrationError):
    pass


class DatabaseUnavailableError(MigrationError):
    pass
