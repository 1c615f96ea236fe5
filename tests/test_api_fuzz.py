"""Property-based tests of the HTTP API: schemathesis against the app's own OpenAPI document.

All of schemathesis's checks (no server error, responses and status codes as
documented, the `Allow` header, schema-valid requests accepted and invalid
ones refused, created resources found and deleted ones gone...), on every
operation, on SQLite and on PostgreSQL, in two ways:

* in process, through schemathesis's pytest integration against the ASGI app
  (examples, coverage and fuzzing phases), one subtest per operation;
* over loopback, as a user would run it: the `schemathesis run` command, every
  phase including the stateful one, against `anibridge` serving on a free port.

Afterwards the database must be sound: on SQLite the integrity check passes,
and on both engines the service starts again on it and serves every row the
fuzzing left.

Each run draws a new seed and prints it (under "Captured stdout" when a test
fails). FUZZ_SEED=<seed> replays it; FUZZ_EXAMPLES sets the cases per operation.
"""

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from app.config import get_settings
from app.main import create_app

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().getrandbits(32))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CLI_TIMEOUT_S = 300
SERVER_START_TIMEOUT_S = 30


@pytest.fixture
def service_environment(
    database_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The service's settings for a fresh database of either engine, set in this
    process too; once the test is done, the database must be sound."""
    environment = {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    print(f"schemathesis seed: FUZZ_SEED={SEED} (examples per operation: {MAX_EXAMPLES})")
    yield environment
    if database_url.get_backend_name() == "sqlite":
        assert_sqlite_file_sound(Path(database_url.database))
    assert_service_restarts_and_serves_every_row()
    get_settings.cache_clear()


def assert_sqlite_file_sound(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        connection.close()


def assert_service_restarts_and_serves_every_row() -> None:
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        assert client.get("/health").json()["status"] == "ok"
        for path in ("/jobs?limit=1000", "/client-tasks"):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:500])


@pytest.fixture
def api_schema(service_environment: dict[str, str]) -> schemathesis.BaseSchema:
    """The app's schema, served in process by the app with its real start-up.

    Schemathesis ends the app's lifespan when the test ends, before the
    soundness checks of `service_environment` run.
    """
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # No example database under the work tree: each run stands on its seed alone.
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
        }
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_api_holds_under_fuzzing(case: schemathesis.Case) -> None:
    case.call_and_validate()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served_url(service_environment: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """`anibridge` serving on a free loopback port; stopped (SIGTERM) after the test."""
    port = free_port()
    environment = {**os.environ, **service_environment, "HOST": "127.0.0.1", "PORT": str(port)}
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.main"], env=environment, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, log)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        print(f"server log (last 3000 characters):\n{log.read_text(errors='replace')[-3000:]}")


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"anibridge exited:\n{log.read_text(errors='replace')}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"anibridge did not serve within {SERVER_START_TIMEOUT_S} s")


def test_schemathesis_run_over_loopback_finds_nothing(served_url: str, tmp_path: Path) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{served_url}/openapi.json",
        "--checks=all",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--seed={SEED}",
        f"--max-examples={MAX_EXAMPLES}",
        "--generation-database=none",
        "--no-color",
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, f"{' '.join(command)}\n{summary}\n{result.stderr[-2000:]}"
    assert "No issues found" in summary, summary
