"""Alembic environment: the URL comes from the app's settings, the metadata from app.data.

A connection handed in through `config.attributes["connection"]` (the
in-process upgrade, pytest-alembic) is used as it is given; otherwise one is
opened from the settings. Runs that move the database (upgrade, downgrade,
stamp) call the protections of `app.migration.guarded_run` in the order read
below (lock, single transaction, newer-database refusal, legacy adoption,
backup, invalid indexes dropped, foreign-key check), and the whole run is tried
again when a statement's lock_timeout runs out (`app.migration.lock_retry`);
runs that only read (current, check, history) take no lock and write nothing.
Every run starts by loading the revision files, so one that cannot be loaded
is named in one line before anything is opened.
"""

from logging.config import fileConfig

from alembic import context

from app.config import ConfigError, get_settings
from app.migration.authoring.autogenerate import process_revision_directives, render_item
from app.migration.connection import (
    connect_for_migrations,
    handed_in_connection,
    settings_for_handed_in,
)
from app.migration.errors import MigrationError
from app.migration.guarded_run import protections, writes_to_database
from app.migration.journal import COMPARE_OPTIONS
from app.migration.lock_retry import retrying_lock_timeouts
from app.migration.revisions import load_revisions, refuse_unknown_revisions

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


def environment_settings():
    """Settings handed in by the caller, else the process's own."""
    if "settings" in config.attributes:
        return config.attributes["settings"]
    try:
        return get_settings()
    except ConfigError as exc:
        raise MigrationError(str(exc)) from None


def run_settings(connection):
    """The settings of a writing run; a handed-in connection alone needs no DATABASE_URL."""
    if "settings" not in config.attributes and "connection" in config.attributes:
        return settings_for_handed_in(connection)
    return environment_settings()


def opened_connection(*, read_only: bool):
    """The handed-in connection, else a checked one opened from the settings."""
    handed_in = config.attributes.get("connection")
    if handed_in is not None:
        return handed_in_connection(handed_in)
    return connect_for_migrations(environment_settings(), read_only=read_only)


def run_migrations_offline() -> None:
    """Print the SQL of the migrations instead of running them (`--sql`)."""
    context.configure(
        url=environment_settings().database_url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **CONFIGURE_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the handed-in connection, or on one opened from the settings."""
    writes = writes_to_database(context)
    with opened_connection(read_only=not writes) as connection:
        if writes:
            run_writing(connection)
        else:
            run_reading(connection)


def run_reading(connection) -> None:
    """current, check, history: nothing written, no lock taken.

    `dont_mutate`, as `alembic current` itself passes: `alembic check` must not
    create alembic_version on a read-only connection. A revision this code does
    not know is named as the upgrade names it.
    """
    context.configure(connection=connection, dont_mutate=True, **CONFIGURE_OPTIONS)
    refuse_unknown_revisions(context.script, connection, run_settings(connection))
    with context.begin_transaction():
        context.run_migrations()


def run_writing(connection) -> None:
    """upgrade, downgrade, stamp, tried again when a statement's lock_timeout ran out."""
    settings = run_settings(connection)
    retrying_lock_timeouts(lambda: run_guarded(connection, settings), connection, settings)


def run_guarded(connection, settings) -> None:
    """One attempt, each protection in its place (app.migration.guarded_run)."""
    with protections(context, connection, settings) as run:
        context.configure(connection=connection, on_version_apply=run.clock, **CONFIGURE_OPTIONS)
        with context.begin_transaction():
            run.refuse_newer_database()
            run.adopt_and_back_up()
            run.drop_invalid_indexes()
            with run.revisions_running():
                context.run_migrations()
            run.check_foreign_keys()


load_revisions(context.script)
if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
