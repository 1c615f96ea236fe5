"""Errors an operator can act on.

They subclass Alembic's `CommandError`, so the plain `alembic` command line
prints them as one `FAILED: ...` line and exits 1 instead of a traceback.
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
