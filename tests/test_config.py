"""Settings from the environment: defaults, accepted values, and one-line errors.

Every bad value must raise `ConfigError` with a single line that names the
variable, never echoing a password, and the `anibridge` command must turn it
into one `anibridge: error: ...` line and exit 1 instead of a traceback.
"""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import cli
from app.config import (
    SETTING_NAMES,
    ConfigError,
    ensure_data_dir,
    get_settings,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ANIBRIDGE = Path(sys.executable).parent / "anibridge"
PASSWORD = "s3cret-Pa55"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No settings variable leaks in from the caller's shell; the settings cache starts empty."""
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def assert_one_line_naming(error: ConfigError, variable: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert variable in message, message
    assert PASSWORD not in message, message


def test_defaults() -> None:
    settings = load_settings({})

    assert settings.data_dir == Path("data")
    assert settings.is_sqlite
    assert settings.database_url.drivername == "sqlite"
    assert Path(settings.database_url.database) == Path("data") / "anibridge_jobs.db"
    assert settings.migrate_on_startup is True
    assert settings.backup_keep == 5
    assert settings.port == 8000
    assert settings.log_level == "info"
    assert settings.host == "0.0.0.0"
    assert settings.migration_lock_timeout == 600.0
    assert settings.table_lock_timeout == 5
    assert settings.table_lock_retries == 5
    assert settings.statement_timeout == 0
    assert settings.connect_retries == 10


def test_sqlite_file_follows_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path / "state")})

    assert Path(settings.database_url.database) == tmp_path / "state" / "anibridge_jobs.db"


def test_good_value_for_every_variable(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path}/elsewhere.db",
            "DB_MIGRATE_ON_STARTUP": " False ",
            "DB_BACKUP_KEEP": "0",
            "DB_MIGRATION_LOCK_TIMEOUT": "30",
            "DB_MIGRATION_TABLE_LOCK_TIMEOUT": " 2 ",
            "DB_MIGRATION_TABLE_LOCK_RETRIES": "0",
            "DB_MIGRATION_STATEMENT_TIMEOUT": "900",
            "DB_CONNECT_RETRIES": "3",
            "HOST": "127.0.0.1",
            "PORT": "65535",
            "LOG_LEVEL": "DEBUG",
            "INSTANCE_ID": " anibridge-2 ",
        }
    )

    assert settings.data_dir == tmp_path
    assert settings.database_url.database == f"{tmp_path}/elsewhere.db"
    assert settings.migrate_on_startup is False
    assert settings.backup_keep == 0
    assert settings.migration_lock_timeout == 30.0
    assert settings.table_lock_timeout == 2
    assert settings.table_lock_retries == 0
    assert settings.statement_timeout == 900
    assert settings.connect_retries == 3
    assert settings.host == "127.0.0.1"
    assert settings.port == 65535
    assert settings.log_level == "debug"
    assert settings.instance_id == "anibridge-2"


def test_default_instance_id_is_the_host_and_new_at_every_start() -> None:
    first, second = (load_settings({}).instance_id for _ in range(2))

    assert first.startswith(f"{socket.gethostname()}-")
    assert second.startswith(f"{socket.gethostname()}-")
    assert first != second


@pytest.mark.parametrize("word", ["1", "true", "YES", "on"])
def test_true_words_enable_migration_on_startup(word: str) -> None:
    assert load_settings({"DB_MIGRATE_ON_STARTUP": word}).migrate_on_startup is True


@pytest.mark.parametrize("word", ["0", "false", "No", "off"])
def test_false_words_disable_migration_on_startup(word: str) -> None:
    assert load_settings({"DB_MIGRATE_ON_STARTUP": word}).migrate_on_startup is False


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://anibridge:{PASSWORD}@db:5432/anibridge",
        f"postgresql+psycopg://anibridge:{PASSWORD}@db:5432/anibridge",
    ],
)
def test_postgresql_urls_use_psycopg_3(raw: str) -> None:
    url = load_settings({"DATABASE_URL": raw}).database_url

    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "anibridge",
        PASSWORD,
        "db",
        5432,
        "anibridge",
    )


def test_sqlite_pysqlite_url_is_normalised() -> None:
    url = load_settings({"DATABASE_URL": "sqlite+pysqlite:////var/lib/anibridge.db"}).database_url

    assert url.drivername == "sqlite"
    assert url.database == "/var/lib/anibridge.db"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("DB_MIGRATE_ON_STARTUP", "maybe"),
        ("PORT", "0"),
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", ""),
        ("LOG_LEVEL", "loud"),
        ("DB_BACKUP_KEEP", "-1"),
        ("DB_BACKUP_KEEP", "1.5"),
        ("DB_MIGRATION_LOCK_TIMEOUT", "0"),
        ("DB_MIGRATION_TABLE_LOCK_TIMEOUT", "0"),
        ("DB_MIGRATION_TABLE_LOCK_TIMEOUT", "2.5s"),
        ("DB_MIGRATION_TABLE_LOCK_RETRIES", "-1"),
        ("DB_MIGRATION_TABLE_LOCK_RETRIES", "101"),
        ("DB_MIGRATION_STATEMENT_TIMEOUT", "-5"),
        ("DB_MIGRATION_STATEMENT_TIMEOUT", "ten"),
        ("DB_CONNECT_RETRIES", "-3"),
        ("INSTANCE_ID", ""),
        ("INSTANCE_ID", "  "),
        ("INSTANCE_ID", "a\nb"),
        ("INSTANCE_ID", "x" * 201),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: raw})

    assert_one_line_naming(caught.value, variable)


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        f"mysql://anibridge:{PASSWORD}@db/anibridge",
        "sqlite://",
        "sqlite:///:memory:",
        f"postgresql://anibridge:{PASSWORD}@db:5432/",
        f"postgresql+asyncpg://anibridge:{PASSWORD}@db:5432/anibridge",
        f"postgres://anibridge:{PASSWORD}@db:5432/anibridge",
        f"postgresql://anibridge:{PASSWORD}@db:port/anibridge",
    ],
)
def test_bad_database_url_is_one_line_without_the_password(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": raw})

    assert_one_line_naming(caught.value, "DATABASE_URL")


def test_ensure_data_dir_creates_a_missing_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "missing" / "data"
    settings = load_settings({"DATA_DIR": str(data_dir)})

    ensure_data_dir(settings)

    assert data_dir.is_dir()


def test_ensure_data_dir_creates_the_sqlite_files_folder(tmp_path: Path) -> None:
    database = tmp_path / "db-folder" / "state.db"
    settings = load_settings(
        {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite:///{database}"}
    )

    ensure_data_dir(settings)

    assert (tmp_path / "data").is_dir()
    assert database.parent.is_dir()


def test_ensure_data_dir_failure_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = load_settings({"DATA_DIR": str(blocker / "data")})

    with pytest.raises(ConfigError) as caught:
        ensure_data_dir(settings)

    assert_one_line_naming(caught.value, "DATA_DIR")


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("PORT", "abc"), ("DB_MIGRATE_ON_STARTUP", "maybe"), ("DATABASE_URL", "garbage")],
)
def test_cli_reports_bad_setting_in_one_line(
    clean_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    variable: str,
    raw: str,
) -> None:
    clean_environment.setenv("DATA_DIR", str(tmp_path / "data"))
    clean_environment.setenv(variable, raw)

    exit_code = cli.main(["migrate"])

    stderr = capsys.readouterr().err
    assert exit_code == 1
    assert stderr.startswith("anibridge: error: ")
    assert stderr.count("\n") == 1
    assert variable in stderr
    assert not (tmp_path / "data" / "anibridge_jobs.db").exists()


def run_anibridge(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(env_overrides)
    return subprocess.run(
        [str(ANIBRIDGE), *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_installed_command_exits_1_without_traceback(tmp_path: Path) -> None:
    result = run_anibridge({"DATA_DIR": str(tmp_path / "data"), "PORT": "70000"}, "migrate")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("anibridge: error: PORT=")
    assert result.stderr.count("\n") == 1


def test_cli_hides_the_password_when_the_server_is_unreachable(
    clean_environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    clean_environment.setenv("DATA_DIR", str(tmp_path / "data"))
    clean_environment.setenv(
        "DATABASE_URL", f"postgresql://anibridge:{PASSWORD}@127.0.0.1:1/anibridge"
    )
    clean_environment.setenv("DB_CONNECT_RETRIES", "0")

    exit_code = cli.main(["migrate"])

    stderr = capsys.readouterr().err
    assert exit_code == 1
    assert stderr.startswith("anibridge: error: ")
    assert stderr.count("\n") == 1
    assert PASSWORD not in stderr


def test_cli_migrates_a_fresh_data_dir(
    clean_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "new" / "data"
    clean_environment.setenv("DATA_DIR", str(data_dir))

    assert cli.main(["migrate"]) == 0
    assert (data_dir / "anibridge_jobs.db").stat().st_size > 0
