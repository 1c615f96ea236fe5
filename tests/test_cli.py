"""Command-line basics: help and version change nothing, log lines carry timestamps,
long revisions and waits are logged as they happen."""

import logging
import re
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from app import app_version
from app.config import Settings
from app.engine import make_engine
from app.migration import progress
from app.migration.guarded_run import upgrade_database
from app.migration.progress import RevisionHeartbeat, StepClock
from tests.chain import HEAD, InjectedRevision, copy_project, plant_revisions
from tests.conftest import settings_for
from tests.legacy_data import VENV_BIN, anibridge, command_environment, run_command

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (INFO|WARNING|ERROR) ")
SLOW_REVISION = "5104e7e1a5e1"


@pytest.mark.parametrize(
    "argv",
    [["anibridge", "--help"], ["python", "-m", "app.migrate", "--help"], ["anibridge", "-h"]],
    ids=" ".join,
)
def test_help_prints_usage_and_creates_nothing(tmp_path: Path, argv: list[str]) -> None:
    data_dir = tmp_path / "data"
    result = run_command([str(VENV_BIN / argv[0]), *argv[1:]], command_environment(data_dir))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")
    assert "The FastAPI app" not in result.stdout
    assert not data_dir.exists()


def test_unknown_argument_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    argv = [str(VENV_BIN / "python"), "-m", "app.migrate", "--bogus"]
    result = run_command(argv, command_environment(data_dir))

    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr
    assert not data_dir.exists()


def test_version_prints_the_release(tmp_path: Path) -> None:
    result = anibridge(["--version"], command_environment(tmp_path / "data"))

    assert (result.returncode, result.stdout.strip()) == (0, f"anibridge {app_version()}")
    assert app_version() != "unknown"


@pytest.mark.parametrize(
    "argv",
    [["alembic", "upgrade", "head"], ["python", "-m", "app.migrate"], ["anibridge", "migrate"]],
    ids=" ".join,
)
def test_log_lines_carry_timestamps(tmp_path: Path, argv: list[str]) -> None:
    environ = command_environment(tmp_path / "data")
    for _ in range(2):  # a fresh database, then the at-head path
        result = run_command([str(VENV_BIN / argv[0]), *argv[1:]], environ)
        lines = result.stderr.splitlines()
        assert result.returncode == 0 and lines, result.stderr
        assert all(TIMESTAMPED.match(line) for line in lines), result.stderr


def test_heartbeat_names_the_running_revision_every_interval(caplog) -> None:
    caplog.set_level(logging.INFO, logger=progress.__name__)
    clock = StepClock()
    heartbeat = RevisionHeartbeat(clock, every_s=0.2)
    clock.listeners = (heartbeat,)

    with heartbeat.running_revisions(["first", "second"]):
        time.sleep(0.5)
        clock()
        time.sleep(0.3)
        clock()
        time.sleep(0.3)

    beats = [record.getMessage() for record in caplog.records]
    assert sum("Revision first still running" in beat for beat in beats) == 2
    assert sum("Revision second still running" in beat for beat in beats) == 1
    assert len(beats) == 3


def slow_project(tmp_path: Path, seconds: float) -> Config:
    project = copy_project(tmp_path / "project")
    body = f"    import time\n\n    time.sleep({seconds})\n    op.execute(sa.text('SELECT 1'))"
    plant_revisions(project, [InjectedRevision(SLOW_REVISION, "Slow revision", body)])
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    return config


def test_a_long_revision_logs_until_it_ends(
    settings: Settings, tmp_path: Path, monkeypatch, caplog
) -> None:
    config = slow_project(tmp_path, 0.9)
    config.attributes.update(settings=settings, skip_models=True, skip_logging_setup=True)
    command.upgrade(config, HEAD)
    monkeypatch.setattr(progress, "HEARTBEAT_EVERY_S", 0.25)
    caplog.set_level(logging.INFO)

    command.upgrade(config, "head")

    beats = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert 2 <= len(beats) <= 4, beats
    assert all(SLOW_REVISION in beat for beat in beats)


def test_a_busy_sqlite_file_is_logged_as_the_wait_begins(tmp_path: Path, caplog) -> None:

    database = tmp_path / "anibridge_jobs.db"
    settings = settings_for(URL.create("sqlite", database=str(database)), tmp_path)
    upgrade_database(settings)
    writer = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    caplog.set_level(logging.INFO)
    release = threading.Timer(1.0, writer.execute, ["ROLLBACK"])
    release.start()

    engine = make_engine(settings.database_url, for_migrations=True)
    with engine.begin() as connection:
        logged = [r.getMessage() for r in caplog.records]
        connection.exec_driver_sql("SELECT 1")
    engine.dispose()
    release.join()
    writer.close()

    assert any("Waiting for the SQLite file" in line for line in logged), logged


def test_offline_sql_on_sqlite_renders_the_released_revisions(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    argv = [str(VENV_BIN / "alembic"), "upgrade", "head", "--sql"]
    result = run_command(argv, command_environment(data_dir))

    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE strm_url_mapping" in result.stdout
    assert not (data_dir / "anibridge_jobs.db").exists()


def test_offline_sql_on_sqlite_names_the_batch_limit_in_one_line(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    body = (
        '    with op.batch_alter_table("job") as batch_op:\n'
        '        batch_op.alter_column("message", existing_type=sa.String(), type_=sa.Text())'
    )
    plant_revisions(project, [InjectedRevision(SLOW_REVISION, "Message as text", body)])
    environ = command_environment(tmp_path / "data", PYTHONPATH=str(project))
    result = subprocess.run(
        [str(VENV_BIN / "alembic"), "upgrade", "head", "--sql"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 255 and "Traceback" not in result.stderr
    assert "cannot proceed in --sql mode" in result.stdout + result.stderr


def test_the_api_documentation_page_is_served(settings: Settings, monkeypatch) -> None:
    """README points at /docs."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setattr("app.main.get_settings", lambda: settings)
    with TestClient(create_app()) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").json()["info"]["title"] == "AniBridge"
