"""The HTTP API end to end, with the real start-up (lifespan) on a real database.

Each client runs the lifespan: settings from the environment, the database
prepared (migrated, or checked with DB_MIGRATE_ON_STARTUP=false), interrupted
jobs failed. The settings are cached per process, so every start clears the
cache after setting the environment.
"""

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from app.config import get_settings
from app.main import create_app
from app.migration.errors import MigrationError
from app.migration.guarded_run import database_revision, upgrade_database
from app.migration.revisions import script_directory
from tests.chain import BASELINE
from tests.conftest import settings_for

SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "DB_MIGRATE_ON_STARTUP",
    "DB_BACKUP_KEEP",
    "DB_MIGRATION_LOCK_TIMEOUT",
    "DB_CONNECT_RETRIES",
    "INSTANCE_ID",
)
JSON = {"Content-Type": "application/json"}
EPISODE_TEMPLATE = "/availability/{site}/{slug}/{season}/{episode}/{language}"
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


@pytest.mark.postgres
def test_a_replica_starting_keeps_the_running_replicas_jobs(
    start_service: StartService, postgres_url: URL
) -> None:
    database = {"DATABASE_URL": postgres_url.render_as_string(hide_password=False)}
    with start_service(INSTANCE_ID="replica-a", **database) as first:
        running = create_job(first)
        assert running["owner"] == "replica-a" and running["lease_expires_at"], running
        first.patch(f"/jobs/{running['id']}", json={"status": "downloading"})
        with start_service(INSTANCE_ID="replica-b", **database) as second:
            assert second.get(f"/jobs/{running['id']}").json()["status"] == "downloading"
            moved = second.patch(f"/jobs/{running['id']}", json={"progress": 50}).json()
            assert moved["owner"] == "replica-b"
        first.patch(f"/jobs/{running['id']}", json={"progress": 60})

    with start_service(INSTANCE_ID="replica-a", **database) as restarted:
        job = restarted.get(f"/jobs/{running['id']}").json()
        assert (job["status"], job["message"]) == ("failed", "interrupted by a restart")


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


# Cases schemathesis found (issue 13), each pinned down on both engines.


def test_explicit_null_for_a_not_null_column_is_refused(
    start_service: StartService, service_url: dict[str, str]
) -> None:
    with start_service(**service_url) as client:
        job = create_job(client)
        for field in ("status", "progress", "downloaded_bytes"):
            response = client.patch(f"/jobs/{job['id']}", json={field: None})
            assert response.status_code == 422, (field, response.text)
        assert client.patch(f"/jobs/{job['id']}", json={"total_bytes": None}).status_code == 200
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"


def test_nul_characters_are_refused_alike_on_both_engines(
    start_service: StartService, service_url: dict[str, str]
) -> None:
    with start_service(**service_url) as client:
        job_id = create_job(client)["id"]
        client.put(EPISODE_PATH, json={"available": True})
        responses = {
            "path": client.get("/jobs/a%00b"),
            "path of a PUT": client.put(f"/client-tasks/{TASK_HASH}%00", json=TASK),
            "query": client.get("/client-tasks", params={"category": "a\x00"}),
            "body": client.post("/jobs", json={"source_site": "s\x00"}),
            "nested JSON value": client.put(
                EPISODE_PATH, json={"available": True, "extra": {"a": ["\x00"]}}
            ),
            "JSON key": client.put(EPISODE_PATH, json={"available": True, "extra": {"\x00": 1}}),
            "job message": client.patch(f"/jobs/{job_id}", json={"message": "\x00"}),
        }
        assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(
            responses, 422
        )
        assert client.get(EPISODE_PATH).json()["extra"] is None


def test_non_finite_numbers_in_json_are_refused(start_service: StartService) -> None:
    with start_service() as client:
        job_id = create_job(client)["id"]
        bodies = [
            (f"/jobs/{job_id}", "patch", '{"speed": Infinity}'),
            (EPISODE_PATH, "put", '{"available": true, "extra": {"a": NaN}}'),
        ]
        for path, method, body in bodies:
            response = client.request(method, path, content=body, headers=JSON)
            assert response.status_code == 422, response.text


def test_ttl_beyond_a_timedelta_is_refused(start_service: StartService) -> None:
    largest = timedelta.max // timedelta(seconds=1)
    with start_service() as client:
        client.put(EPISODE_PATH, json={"available": True})
        assert client.get(EPISODE_PATH, params={"ttl": largest + 1}).status_code == 422
        assert client.get(EPISODE_PATH, params={"ttl": 86_400_000_000_000}).status_code == 422
        assert client.get(EPISODE_PATH, params={"ttl": largest}).json()["fresh"] is True


@pytest.mark.parametrize(
    "completion_on", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"]
)
def test_a_date_time_leaving_years_1_to_9999_in_utc_is_refused(
    start_service: StartService, completion_on: str
) -> None:
    with start_service() as client:
        task = {**TASK, "completion_on": completion_on}
        response = client.put(f"/client-tasks/{TASK_HASH}", json=task)
        assert response.status_code == 422, response.text
        assert "years 1 to 9999" in response.text
        assert client.get("/client-tasks").json() == []


def test_date_times_are_stored_as_the_same_instant_in_utc(
    start_service: StartService, service_url: dict[str, str]
) -> None:
    with start_service(**service_url) as client:
        task = {**TASK, "completion_on": "9999-12-31T23:59:59+01:00"}
        assert client.put(f"/client-tasks/{TASK_HASH}", json=task).status_code == 200
        stored = client.get("/client-tasks").json()[0]["completion_on"]
        assert datetime.fromisoformat(stored).replace(tzinfo=UTC) == datetime(
            9999, 12, 31, 22, 59, 59, tzinfo=UTC
        )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (EPISODE_PATH, {"available": True, "height": False}),
        (EPISODE_PATH, {"available": 1}),
        (EPISODE_PATH, {"available": True, "height": "1080"}),
        (EPISODE_PATH, {"available": True, "height": 1080.5}),
        (f"/client-tasks/{TASK_HASH}", {**TASK, "completion_on": 0}),
        (f"/client-tasks/{TASK_HASH}", {**TASK, "completion_on": "2026-01-31"}),
        (f"/client-tasks/{TASK_HASH}", {**TASK, "completion_on": "2026-01-31T20:00:00"}),
        (f"/client-tasks/{TASK_HASH}", {**TASK, "season": True}),
    ],
)
def test_values_of_the_wrong_type_are_refused_not_coerced(
    start_service: StartService, path: str, body: dict
) -> None:
    with start_service() as client:
        response = client.put(path, json=body)
        assert response.status_code == 422, response.text


def test_numbers_in_the_url_are_plain_decimal_integers(start_service: StartService) -> None:
    with start_service() as client:
        client.put(EPISODE_PATH, json={"available": True})
        for ttl in ("1.0", "+1", " 1", "1_0", "true"):
            assert client.get(EPISODE_PATH, params={"ttl": ttl}).status_code == 422, ttl
        assert client.get(EPISODE_PATH.replace("/1/1/", "/1.0/1/")).status_code == 422
        assert client.get(EPISODE_PATH.replace("/1/1/", "/01/1/")).status_code == 200


def test_integers_written_as_integral_json_numbers_are_accepted(
    start_service: StartService,
) -> None:
    """JSON Schema counts 1080.0 as an integer, so the API takes it too."""
    with start_service() as client:
        put = client.put(EPISODE_PATH, json={"available": True, "height": 1080.0})
        assert (put.status_code, put.json()["height"]) == (200, 1080)


def test_the_64_bit_bound_is_exact_in_the_schema_and_the_api(
    start_service: StartService, service_url: dict[str, str]
) -> None:
    with start_service(**service_url) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["JobUpdate"]
        assert schema["properties"]["downloaded_bytes"]["exclusiveMaximum"] == 2**63
        assert type(schema["properties"]["downloaded_bytes"]["exclusiveMaximum"]) is int
        job_id = create_job(client)["id"]
        largest = client.patch(f"/jobs/{job_id}", json={"downloaded_bytes": 2**63 - 1})
        assert (largest.status_code, largest.json()["downloaded_bytes"]) == (200, 2**63 - 1)
        assert client.patch(f"/jobs/{job_id}", json={"downloaded_bytes": 2**63}).status_code == 422


def test_every_status_code_returned_is_documented(start_service: StartService) -> None:
    with start_service() as client:
        paths = client.get("/openapi.json").json()["paths"]
        job_id = create_job(client)["id"]
        seen = [
            ("/jobs/{job_id}", "get", 404, client.get("/jobs/missing")),
            ("/jobs/{job_id}", "patch", 404, client.patch("/jobs/missing", json={})),
            ("/jobs/{job_id}", "get", 404, client.get("/jobs/")),
            ("/jobs", "post", 400, client.post("/jobs", content=b"1" * 5000, headers=JSON)),
            ("/client-tasks/{hash}", "put", 404, client.put("/client-tasks/a%2Fb", json=TASK)),
            ("/client-tasks/{hash}", "delete", 404, client.delete("/client-tasks/missing")),
            (EPISODE_TEMPLATE, "get", 404, client.get(EPISODE_PATH)),
            ("/jobs/{job_id}", "patch", 422, client.patch(f"/jobs/{job_id}", json={"eta": -1})),
        ]
        for path, method, status, response in seen:
            assert response.status_code == status, (path, method, response.text)
            assert str(status) in paths[path][method]["responses"], (path, method, status)


@pytest.mark.parametrize(
    "body",
    [b"{\xff}", b'{"message": "\\ud800"}', b'{"speed": NaN}', b'{"eta": -Infinity}', b"1" * 5000],
)
def test_hostile_bodies_get_a_client_error(start_service: StartService, body: bytes) -> None:
    with start_service() as client:
        job_id = create_job(client)["id"]
        response = client.patch(f"/jobs/{job_id}", content=body, headers=JSON)
        assert response.status_code in (400, 422), response.text
        assert response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/jobs", {"GET", "POST"}),
        ("/jobs/x", {"GET", "PATCH"}),
        ("/client-tasks/x", {"PUT", "DELETE"}),
        (EPISODE_PATH, {"GET", "PUT"}),
        ("/health", {"GET"}),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    start_service: StartService, path: str, methods: set[str]
) -> None:
    with start_service() as client:
        for method in ("HEAD", "OPTIONS", "TRACE"):
            response = client.request(method, path)
            assert response.status_code == 405
            assert set(response.headers["allow"].split(", ")) == methods


def test_a_write_is_committed_before_the_response(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client told 201 can read the job back; a failed commit is never told 201."""
    with start_service() as client:
        job_id = create_job(client)["id"]
        assert client.get(f"/jobs/{job_id}").status_code == 200

        def commit_fails(session: Session) -> None:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

        monkeypatch.setattr(Session, "commit", commit_fails)
        client_without_raise = TestClient(client.app, raise_server_exceptions=False)
        assert client_without_raise.post("/jobs", json={}).status_code == 500
        monkeypatch.undo()
        assert [job["id"] for job in client.get("/jobs").json()] == [job_id]


@pytest.mark.parametrize(
    ("template", "body"),
    [
        ("/client-tasks/task-{key}", TASK),
        ("/availability/aniworld.to/show-{key}/1/1/German Dub", {"available": True}),
    ],
)
def test_concurrent_first_writes_of_one_key_all_succeed(
    start_service: StartService, service_url: dict[str, str], template: str, body: dict
) -> None:
    """Upserts are one statement: no request loses a read-then-insert race."""
    with start_service(**service_url) as client, ThreadPoolExecutor(8) as pool:
        for key in range(10):
            paths = [template.format(key=key)] * 8
            statuses = list(pool.map(lambda path: client.put(path, json=body).status_code, paths))
            assert statuses == [200] * 8, (paths[0], statuses)
