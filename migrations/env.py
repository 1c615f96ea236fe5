"""Alembic environment: the URL comes from the app's settings, the metadata from app.data.

Runs that move the database (upgrade, downgrade, stamp) go through
`app.migration.guarded_run.guarded_migrations` (lock, single transaction, newer-database
refusal, legacy adoption, backup); see there. Runs that only read (current,
check, history) use a read-only connection and never wait for an upgrade.
"""

from logging.config import fileConfig

from alembic import context

from app.config import ConfigError, get_settings
from app.migration.authoring.autogenerate import process_revision_directives, render_item
from app.migration.connection import migration_connection
from app.migration.errors import MigrationError
from app.migration.guarded_run import guarded_migrations, read_only_run, writes_to_database
from app.migration.journal import COMPARE_OPTIONS

config = context.config

if config.config_file_name is not None and not config.attributes.get("skip_logging_setup"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def load_target_metadata():
    """The models' metadata, for autogenerate and `alembic check`.

    Upgrading never compares with the models, so the in-process upgrade
    (`anibridge`, `python -m app.migrate`) asks to skip importing them, and SQLModel
    with them; the `alembic` command line (the container's step) still loads them.
    """
    if config.attributes.get("skip_models"):
        return None
    from app.data.models import metadata

    return metadata


target_metadata = load_target_metadata()

CONFIGURE_OPTIONS = {
    "target_metadata": target_metadata,
    "render_as_batch": True,
    "transactional_ddl": True,
    **COMPARE_OPTIONS,
    "render_item": render_item,
    "process_revision_directives": process_revision_directives,
}


def load_settings():
    """Settings handed in by the caller, else the process's own."""
    if "settings" in config.attributes:
        return config.attributes["settings"]
    try:
        return get_settings()
    except ConfigError as exc:
        raise MigrationError(str(exc)) from None


def run_migrations_offline() -> None:
    """Print the SQL of the migrations instead of running them (`--sql`)."""
    context.configure(
        url=load_settings().database_url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **CONFIGURE_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a handed-in connection, or on one opened from the settings."""
    settings = load_settings()
    writes = writes_to_database(context)
    protections = guarded_migrations if writes else read_only_run
    with (
        migration_connection(
            settings, config.attributes.get("connection"), read_only=not writes
        ) as connection,
        protections(context, connection, settings, **CONFIGURE_OPTIONS),
    ):
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
