"""The HTTP API end to end, with the real start-up (lifespan) on a real database.

Each client runs the lifespan: settings from the environment, the database
prepared (migrated, or checked with DB_MIGRATE_ON_STARTUP=false), interrupted
jobs failed. The settings are cached per process, so every start clears the
cache after setting the environment.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL

from app.config import get_settings
from app.db.errors import MigrationError
from app.db.upgrade import database_revision, script_directory, upgrade_database
from app.main import create_app
from tests.conftest import settings_for

BASELINE = "5cb5dab892ec"
SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "DB_MIGRATE_ON_STARTUP",
    "DB_BACKUP_KEEP",
    "DB_MIGRATION_LOCK_TIMEOUT",
    "DB_CONNECT_RETRIES",
)
EPISODE_PATH = "/availability/aniworld.to/attack-on-titan/1/1/German Dub"
TASK_HASH = "a" * 40
TASK = {
    "name": "Attack on Titan S01E01 [German Dub]",
    "slug": "attack-on-titan",
    "season": 1,
    "episode": 1,
    "language": "German Dub",
    "category": "sonarr",
}

StartService = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start_service(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> Iterator[StartService]:
    """Start the app (lifespan included) on DATA_DIR, with extra environment variables."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(data_dir))

    @contextmanager
    def start(**environ: str) -> Iterator[TestClient]:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        try:
            with TestClient(create_app()) as client:
                yield client
        finally:
            get_settings.cache_clear()

    yield start
    get_settings.cache_clear()


@pytest.fixture
def service_url(database_url: URL) -> dict[str, str]:
    """DATABASE_URL for the parametrized engine (the SQLite one lives in DATA_DIR)."""
    return {"DATABASE_URL": database_url.render_as_string(hide_password=False)}


def head_revision() -> str:
    return script_directory().get_current_head()


def create_job(client: TestClient, **body: str) -> dict:
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_health_and_jobs_flow(start_service: StartService, service_url: dict[str, str]) -> None:
    with start_service(**service_url) as client:
        health = client.get("/health").json()
        dialect = "sqlite" if service_url["DATABASE_URL"].startswith("sqlite") else "postgresql"
        assert health == {"status": "ok", "database": dialect, "revision": head_revision()}

        job = create_job(client, source_site="s.to")
        assert (job["status"], job["progress"], job["source_site"]) == ("queued", 0.0, "s.to")
        assert client.get(f"/jobs/{job['id']}").json() == job

        big = 3 * 2**32
        patched = client.patch(
            f"/jobs/{job['id']}",
            json={"status": "downloading", "progress": 12.5, "downloaded_bytes": big},
        )
        assert patched.status_code == 200, patched.text
        assert (patched.json()["status"], patched.json()["downloaded_bytes"]) == (
            "downloading",
            big,
        )
        assert patched.json()["updated_at"] >= job["updated_at"]
        assert client.get(f"/jobs/{job['id']}").json() == patched.json()


def test_job_errors(start_service: StartService) -> None:
    with start_service() as client:
        job_id = create_job(client)["id"]

        assert client.get("/jobs/missing").status_code == 404
        assert client.patch("/jobs/missing", json={"progress": 1}).status_code == 404
        assert client.patch(f"/jobs/{job_id}", json={"progress": 500}).status_code == 422
        assert client.patch(f"/jobs/{job_id}", json={"status": "bogus"}).status_code == 422
        assert client.post("/jobs", json={"source_site": ""}).status_code == 422
        assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"


def test_numbers_beyond_the_columns_are_refused_not_crashed_on(
    start_service: StartService,
) -> None:
    huge = 10**30
    with start_service() as client:
        job_id = create_job(client)["id"]
        task = {"name": "n", "slug": "s", "season": huge, "episode": 1, "language": "German Dub"}
        responses = [
            client.get(f"/availability/aniworld.to/x/{huge}/1/German Dub"),
            client.put(
                "/availability/aniworld.to/x/1/1/German Dub",
                json={"available": True, "height": huge},
            ),
            client.put("/client-tasks/abc", json=task),
            client.patch(f"/jobs/{job_id}", json={"downloaded_bytes": huge}),
            client.patch(f"/jobs/{job_id}", json={"eta": 2**31}),
        ]
        assert [response.status_code for response in responses] == [422] * len(responses)
        assert client.patch(f"/jobs/{job_id}", json={"downloaded_bytes": 2**40}).status_code == 200


def test_list_jobs_with_status_filter(start_service: StartService) -> None:
    with start_service() as client:
        queued = create_job(client)["id"]
        downloading = create_job(client)["id"]
        client.patch(f"/jobs/{downloading}", json={"status": "downloading"})

        listed = client.get("/jobs", params={"status": "downloading"}).json()
        assert [job["id"] for job in listed] == [downloading]
        assert {job["id"] for job in client.get("/jobs").json()} == {queued, downloading}
        assert len(client.get("/jobs", params={"limit": 1}).json()) == 1


def test_availability(start_service: StartService) -> None:
    extra = {"providers": ["VOE"], "note": "進撃の巨人 ü"}
    with start_service() as client:
        assert client.get(EPISODE_PATH).status_code == 404

        put = client.put(EPISODE_PATH, json={"available": True, "height": 1080, "extra": extra})
        assert put.status_code == 200, put.text
        assert (put.json()["fresh"], put.json()["extra"]) == (True, extra)

        got = client.get(EPISODE_PATH).json()
        assert (got["available"], got["height"], got["fresh"]) == (True, 1080, True)
        assert client.get(EPISODE_PATH, params={"ttl": 0}).json()["fresh"] is False
        assert client.get(EPISODE_PATH.replace("aniworld.to", "s.to")).status_code == 404

        bad_season = EPISODE_PATH.replace("/1/1/", "/one/1/")
        assert client.put(bad_season, json={"available": True}).status_code == 422


def test_client_tasks(start_service: StartService) -> None:
    with start_service() as client:
        put = client.put(f"/client-tasks/{TASK_HASH}", json=TASK)
        assert put.status_code == 200, put.text
        assert (put.json()["state"], put.json()["site"]) == ("queued", "aniworld.to")
        other = {**TASK, "category": "radarr"}
        assert client.put(f"/client-tasks/{'b' * 40}", json=other).status_code == 200

        sonarr = client.get("/client-tasks", params={"category": "sonarr"}).json()
        assert [task["hash"] for task in sonarr] == [TASK_HASH]
        bad_state = {**TASK, "state": "bogus"}
        assert client.put(f"/client-tasks/{TASK_HASH}", json=bad_state).status_code == 422

        assert client.delete(f"/client-tasks/{TASK_HASH}").status_code == 204
        assert client.delete(f"/client-tasks/{TASK_HASH}").status_code == 404
        assert [task["hash"] for task in client.get("/client-tasks").json()] == ["b" * 40]


def test_data_survives_a_restart_and_interrupted_jobs_fail(
    start_service: StartService,
) -> None:
    with start_service() as client:
        finished = create_job(client)["id"]
        client.patch(f"/jobs/{finished}", json={"status": "completed", "progress": 100})
        interrupted = create_job(client)["id"]
        client.patch(f"/jobs/{interrupted}", json={"status": "downloading", "progress": 40})
        client.put(EPISODE_PATH, json={"available": True})
        client.put(f"/client-tasks/{TASK_HASH}", json=TASK)

    with start_service() as client:
        assert client.get(f"/jobs/{finished}").json()["status"] == "completed"
        restarted = client.get(f"/jobs/{interrupted}").json()
        assert (restarted["status"], restarted["progress"]) == ("failed", 40.0)
        assert restarted["message"] == "interrupted by a restart"
        assert client.get(EPISODE_PATH).json()["available"] is True
        assert [task["hash"] for task in client.get("/client-tasks").json()] == [TASK_HASH]


def test_without_migration_on_startup_an_empty_database_is_refused(
    start_service: StartService, data_dir: Path
) -> None:
    data_dir.mkdir(parents=True)
    database = data_dir / "anibridge_jobs.db"
    database.touch()

    with (
        pytest.raises(MigrationError, match="alembic upgrade head"),
        start_service(DB_MIGRATE_ON_STARTUP="false"),
    ):
        pass

    assert database.stat().st_size == 0


def test_without_migration_on_startup_a_database_behind_head_is_refused(
    start_service: StartService, sqlite_url: URL, data_dir: Path
) -> None:
    settings = settings_for(sqlite_url, data_dir)
    upgrade_database(settings, BASELINE)

    with (
        pytest.raises(MigrationError, match="alembic upgrade head"),
        start_service(DB_MIGRATE_ON_STARTUP="false"),
    ):
        pass

    assert database_revision(settings) == (BASELINE,)


def test_without_migration_on_startup_a_database_at_head_is_served(
    start_service: StartService, sqlite_url: URL, data_dir: Path
) -> None:
    upgrade_database(settings_for(sqlite_url, data_dir))

    with start_service(DB_MIGRATE_ON_STARTUP="false") as client:
        assert client.get("/health").json()["revision"] == head_revision()
        assert create_job(client)["status"] == "queued"
