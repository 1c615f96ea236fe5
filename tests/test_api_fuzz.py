"""Property-based test of the HTTP API: schemathesis against the app's own OpenAPI document.

Every operation, every check schemathesis has (no server error, responses as
documented, status codes and headers documented, schema-valid requests accepted,
schema-invalid ones refused...), with the real start-up on SQLite and on
PostgreSQL. Afterwards the database must be sound: SQLite's integrity check
passes and the service starts again on it and serves every row the fuzzing left.

Each run draws a new seed and prints it; a failure shows it under "Captured
stdout setup". Rerun the same cases with FUZZ_SEED=<seed>; FUZZ_EXAMPLES sets
how many cases the fuzzing phase makes per operation.
"""

import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from app.config import get_settings
from app.main import create_app

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().getrandbits(32))
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))


def fuzz_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # No example database under the work tree: each run stands on its seed alone.
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none"},
        }
    )


@pytest.fixture
def api_schema(
    database_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[schemathesis.BaseSchema]:
    """The app's schema, served by the app on a fresh database of either engine.

    Schemathesis ends the app's lifespan when the test ends, before this
    fixture's teardown checks the database it leaves.
    """
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    print(f"schemathesis seed: FUZZ_SEED={SEED} (examples per operation: {MAX_EXAMPLES})")
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=fuzz_config())
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


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_api_holds_under_fuzzing(case: schemathesis.Case) -> None:
    case.call_and_validate()
