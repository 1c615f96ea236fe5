"""Settings, read from the environment once.

Every bad value raises `ConfigError` with one line that names the variable and
what it accepts; entry points print that line and exit non-zero.

SQLAlchemy is imported only to handle the database URL: `app.migration.at_head`
validates the other settings with this module at the cost of the standard
library alone.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DATABASE_FILE_NAME = "anibridge_jobs.db"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
POSTGRES_DRIVERS = ("postgresql", "postgresql+psycopg")
SETTING_NAMES = (
    "DATA_DIR",
    "DATABASE_URL",
    "DB_MIGRATE_ON_STARTUP",
    "DB_BACKUP_KEEP",
    "DB_MIGRATION_LOCK_TIMEOUT",
    "DB_MIGRATION_TABLE_LOCK_TIMEOUT",
    "DB_MIGRATION_TABLE_LOCK_RETRIES",
    "DB_MIGRATION_STATEMENT_TIMEOUT",
    "DB_CONNECT_RETRIES",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "INSTANCE_ID",
)
INSTANCE_ID_MAX_LENGTH = 200
URL_HINT = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: URL
    migrate_on_startup: bool
    backup_keep: int
    migration_lock_timeout: float
    table_lock_timeout: int
    table_lock_retries: int
    statement_timeout: int
    connect_retries: int
    host: str
    port: int
    log_level: str
    instance_id: str
    """Who owns the jobs this service creates and renews (app.data.leases)."""

    @property
    def backups_dir(self) -> Path:
        """Where SQLite backups are taken, listed and restored from."""
        return self.data_dir / "backups"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.get_backend_name() == "sqlite"


def parse_bool(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")


def parse_int(name: str, raw: str, *, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is not valid: use a whole number from {low} to {high}")
    return value


def parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    word = raw.strip().lower()
    if word not in choices:
        raise ConfigError(f"{name}={raw!r} is not valid: use one of {', '.join(choices)}")
    return word


def parse_database_url(raw: str) -> URL:
    """Parse DATABASE_URL, normalising plain `postgresql://` to psycopg 3.

    The error never repeats the value: it may carry a password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise ConfigError(f"DATABASE_URL is not a database URL: use {URL_HINT}") from None
    if url.drivername in SQLITE_DRIVERS:
        if not url.database or url.database == ":memory:":
            raise ConfigError(f"DATABASE_URL needs a SQLite file path: use {URL_HINT}")
        return url.set(drivername="sqlite")
    if url.drivername in POSTGRES_DRIVERS:
        if not url.database:
            raise ConfigError(f"DATABASE_URL names no database: use {URL_HINT}")
        return url.set(drivername="postgresql+psycopg")
    raise ConfigError(
        f"DATABASE_URL uses the unsupported driver {url.drivername!r}: use {URL_HINT}"
    )


def sqlite_url(path: Path) -> URL:
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("DATA_DIR", "./data")).expanduser()
    raw_url = env.get("DATABASE_URL", "").strip()
    database_url = (
        parse_database_url(raw_url) if raw_url else sqlite_url(data_dir / DATABASE_FILE_NAME)
    )
    return Settings(data_dir=data_dir, database_url=database_url, **parse_options(env))


def parse_options(env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting but the database's location, validated (standard library only)."""
    return {
        "migrate_on_startup": parse_bool(
            "DB_MIGRATE_ON_STARTUP", env.get("DB_MIGRATE_ON_STARTUP", "true")
        ),
        "backup_keep": int_option(env, "DB_BACKUP_KEEP", "5", low=0, high=1000),
        "migration_lock_timeout": float(
            int_option(env, "DB_MIGRATION_LOCK_TIMEOUT", "600", low=1, high=86400)
        ),
        "table_lock_timeout": int_option(
            env, "DB_MIGRATION_TABLE_LOCK_TIMEOUT", "5", low=1, high=3600
        ),
        "table_lock_retries": int_option(
            env, "DB_MIGRATION_TABLE_LOCK_RETRIES", "5", low=0, high=100
        ),
        "statement_timeout": int_option(
            env, "DB_MIGRATION_STATEMENT_TIMEOUT", "0", low=0, high=86400
        ),
        "connect_retries": int_option(env, "DB_CONNECT_RETRIES", "10", low=0, high=1000),
        "host": env.get("HOST", "0.0.0.0").strip() or "0.0.0.0",
        "port": int_option(env, "PORT", "8000", low=1, high=65535),
        "log_level": parse_choice("LOG_LEVEL", env.get("LOG_LEVEL", "info"), LOG_LEVELS),
        "instance_id": parse_instance_id(env.get("INSTANCE_ID")),
    }


def parse_instance_id(raw: str | None) -> str:
    """INSTANCE_ID, else one of this process's own: the host name and a random suffix.

    The host name alone is no identity: containers on the host's network all
    share the host's, and two replicas with one identity would fail each
    other's jobs at start (docs/replicas.md, "Whose jobs a start fails").
    """
    if raw is None:
        return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    word = raw.strip()
    if not word or len(word) > INSTANCE_ID_MAX_LENGTH or not word.isprintable():
        raise ConfigError(
            f"INSTANCE_ID={raw!r} is not valid: use 1 to {INSTANCE_ID_MAX_LENGTH} "
            "printable characters, unique to this replica"
        )
    return word


def int_option(env: Mapping[str, str], name: str, default: str, *, low: int, high: int) -> int:
    return parse_int(name, env.get(name, default), low=low, high=high)


def ensure_data_dir(settings: Settings) -> None:
    """Create DATA_DIR (and the SQLite file's folder) if missing."""
    folders = {settings.data_dir}
    if settings.is_sqlite:
        folders.add(Path(settings.database_url.database).parent)
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(
                f"DATA_DIR: {folder} is not a folder; move it away or set DATA_DIR to a folder"
            ) from None
        except OSError as exc:
            raise ConfigError(f"DATA_DIR: cannot create {folder}: {exc.strerror}") from None


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    settings = load_settings()
    ensure_data_dir(settings)
    return settings
