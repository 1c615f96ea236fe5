"""The real image, built from this checkout and run by a real Docker engine.

The image is built once per run (see tests/container_engine.py for the engine
and the base image). Every container shares the host's network with its own
PORT, and is removed with its volumes at the end of its test. Without a usable
engine these tests are skipped, and fail under CI=true.

Run them alone with `.venv/bin/pytest -m container`.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.config import DATABASE_FILE_NAME
from tests.container_engine import (
    DockerUnavailable,
    Engine,
    build_app_image,
    free_port,
    start_engine,
)
from tests.legacy_data import (
    HEAD,
    LEGACY_SITE,
    LEGACY_TABLES,
    RELEASE_CHECKSUMS,
    RELEASE_FILES,
    SITE_COLUMNS,
    release_file,
    release_row_checksums,
    released_columns,
    sha256_of,
    sqlite_revision,
)

pytestmark = pytest.mark.container

UNFINISHED_JOB_STATUSES = ("queued", "downloading")
INTERRUPTED_MESSAGE = "interrupted by a restart"
HEALTH_TIMEOUT_S = 60


# --- the engine, the image and the containers -------------------------------


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """A Docker engine: skipped locally when none can be used, a failure under CI=true."""
    try:
        engine = start_engine()
    except DockerUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def image(engine: Engine) -> str:
    return build_app_image(engine)


@dataclass
class Container:
    """One container of the app's image, on the host's network at its own port."""

    engine: Engine
    name: str
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def state(self) -> dict:
        output = self.engine.docker("inspect", "--format={{json .State}}", self.name).stdout
        return json.loads(output)

    def logs(self) -> str:
        result = self.engine.docker("logs", self.name)
        return result.stdout + result.stderr

    def wait_for_health(self, timeout: float = HEALTH_TIMEOUT_S) -> dict:
        """/health's answer once it answers; fails early with the logs if the container exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return request_json(self.url("/health"))
            except OSError:
                pass
            if not self.state()["Running"]:
                pytest.fail(f"{self.name} exited before /health answered:\n{self.logs()}")
            time.sleep(0.1)
        pytest.fail(f"/health did not answer within {timeout} s:\n{self.logs()}")

    def wait_for_exit(self, timeout: float = HEALTH_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout
        while (state := self.state())["Running"]:
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} still runs after {timeout} s:\n{self.logs()}")
            time.sleep(0.1)
        return state["ExitCode"]

    def stop(self) -> float:
        """`docker stop` (SIGTERM, then SIGKILL after 10 s); returns the seconds it took."""
        started = time.monotonic()
        self.engine.docker("stop", self.name, timeout=60)
        return time.monotonic() - started


@dataclass
class Containers:
    """Starts containers of the image and removes them, and their volumes, afterwards."""

    engine: Engine
    image: str
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = f"anibridge-test-{uuid.uuid4().hex[:12]}"
        self.engine.docker("volume", "create", name)
        self.volumes.append(name)
        return name

    def run(
        self,
        data: str | Path,
        *options: str,
        data_mode: str = "rw",
        image: str | None = None,
        command: tuple[str, ...] = (),
        **environ: str,
    ) -> Container:
        """Start a container with `data` (a volume name or a host folder) at /data."""
        name = f"anibridge-test-{uuid.uuid4().hex[:12]}"
        port = free_port()
        settings = {"PORT": str(port), **environ}
        arguments = [f"--env={key}={value}" for key, value in settings.items()]
        self.engine.docker(
            "run",
            "--detach",
            f"--name={name}",
            "--network=host",
            f"--volume={data}:/data:{data_mode}",
            *arguments,
            *options,
            image or self.image,
            *command,
        )
        self.names.append(name)
        return Container(self.engine, name, port)

    def remove_all(self) -> None:
        if self.names:
            self.engine.docker("rm", "--force", "--volumes", *self.names, check=False)
        if self.volumes:
            self.engine.docker("volume", "rm", "--force", *self.volumes, check=False)


@pytest.fixture
def containers(engine: Engine, image: str) -> Iterator[Containers]:
    started = Containers(engine, image)
    yield started
    started.remove_all()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A host folder to mount at /data, so the test can read the database directly."""
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def request_json(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


# --- reading databases ---------------------------------------------------------


def table_rows(database: Path, table: str, columns: list[str]) -> list[tuple]:
    """The rows of `columns`, ordered by all of them, with sqlite3's default types."""
    quoted = ", ".join(f'"{column}"' for column in columns)
    connection = sqlite3.connect(database)
    try:
        return connection.execute(f'SELECT {quoted} FROM "{table}" ORDER BY {quoted}').fetchall()
    finally:
        connection.close()


def rows_digest(rows: list[tuple]) -> str:
    """The spec's checksum: sha256 over `repr(row) + "\\n"` of the ordered rows."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((repr(tuple(row)) + "\n").encode())
    return digest.hexdigest()


def as_served(columns: list[str], rows: list[tuple]) -> list[tuple]:
    """Job rows as the service leaves them at start: unfinished jobs become failed, time unknown."""
    status, message, updated = (columns.index(name) for name in ("status", "message", "updated_at"))
    served = []
    for row in map(list, rows):
        if row[status] in UNFINISHED_JOB_STATUSES or row[message] == INTERRUPTED_MESSAGE:
            row[status], row[message], row[updated] = "failed", INTERRUPTED_MESSAGE, None
        served.append(tuple(row))
    return sorted(served, key=repr)


def assert_same_rows(table: str, expected: list[tuple], actual: list[tuple]) -> None:
    """Counts first, then digests; the first differing row only when the digests differ."""
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows, expected {len(expected)}"
    if rows_digest(actual) != rows_digest(expected):
        first = next(
            (pair for pair in zip(expected, actual, strict=True) if pair[0] != pair[1]), None
        )
        pytest.fail(f"{table}: rows differ; first difference (expected, actual): {first}")


# --- scenarios -------------------------------------------------------------------


def test_fresh_volume_starts_at_head(containers: Containers) -> None:
    container = containers.run(containers.volume())

    assert container.wait_for_health() == {"status": "ok", "database": "sqlite", "revision": HEAD}
    assert request_json(container.url("/jobs"), "POST", {})["status"] == "queued"


def test_status_in_the_running_container_reads_without_leaving_root_files(
    containers: Containers,
) -> None:
    """docker/README.md's `docker exec <container> anibridge status`, as root, exec's default."""
    container = containers.run(containers.volume())
    container.wait_for_health()

    report = json.loads(
        containers.engine.docker("exec", container.name, "anibridge", "status", "--json").stdout
    )
    human = containers.engine.docker("exec", container.name, "anibridge", "status").stdout
    root_owned = containers.engine.docker(
        "exec", container.name, "find", "/data", "-user", "root"
    ).stdout

    assert (report["state"], report["current"], report["upgrade_running"]) == (
        "at_head",
        [HEAD],
        False,
    )
    assert [row["direction"] for row in report["history"]] == ["upgrade", "upgrade"]
    assert "state:            at head" in human
    assert root_owned == ""


@pytest.mark.parametrize("release", RELEASE_FILES)
def test_released_database_is_adopted_with_every_row(
    containers: Containers, data_dir: Path, release: str
) -> None:
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(release_file(release), database)
    container = containers.run(data_dir)

    assert container.wait_for_health()["revision"] == HEAD
    container.stop()

    assert sqlite_revision(database) == HEAD
    columns = released_columns(release)
    untouched = {table: columns[table] for table in ("clienttask", "episodeavailability")}
    expected = {table: RELEASE_CHECKSUMS[release][table] for table in untouched}
    assert release_row_checksums(database, untouched) == expected
    job_columns = columns["job"]
    assert_same_rows(
        "job",
        as_served(job_columns, table_rows(release_file(release), "job", job_columns)),
        as_served(job_columns, table_rows(database, "job", job_columns)),
    )
    for table in LEGACY_TABLES:
        site = SITE_COLUMNS[table]
        if site not in columns[table]:
            assert {row[0] for row in table_rows(database, table, [site])} <= {LEGACY_SITE}


def test_changed_puid_and_pgid_take_over_the_files(containers: Containers, data_dir: Path) -> None:
    first = containers.run(data_dir, PUID="1000", PGID="1000")
    first.wait_for_health()
    job = request_json(first.url("/jobs"), "POST", {})
    first.stop()

    second = containers.run(data_dir, PUID="2345", PGID="2346")
    second.wait_for_health()
    assert request_json(second.url(f"/jobs/{job['id']}"))["id"] == job["id"]
    request_json(second.url("/jobs"), "POST", {})

    database = data_dir / DATABASE_FILE_NAME
    for path in (data_dir, database):
        assert (path.stat().st_uid, path.stat().st_gid) == (2345, 2346), path


def test_read_only_volume_stops_the_start_with_one_line(
    containers: Containers, data_dir: Path
) -> None:
    shutil.copyfile(release_file("v2.1.0.db"), data_dir / DATABASE_FILE_NAME)
    before = sha256_of(data_dir / DATABASE_FILE_NAME)
    container = containers.run(data_dir, data_mode="ro")

    assert container.wait_for_exit() != 0
    logs = container.logs()
    errors = [line for line in logs.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, logs
    assert "/data" in errors[0] and "read-only" in errors[0], logs
    assert "Traceback" not in logs
    assert sha256_of(data_dir / DATABASE_FILE_NAME) == before


def test_healthcheck_reaches_healthy(containers: Containers) -> None:
    container = containers.run(containers.volume(), "--health-interval=1s")
    container.wait_for_health()

    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while (health := container.state()["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting" and time.monotonic() < deadline, health
        time.sleep(0.2)


def test_docker_stop_is_clean_and_quick(containers: Containers) -> None:
    container = containers.run(containers.volume())
    container.wait_for_health()

    took = container.stop()

    assert took < 3, f"docker stop took {took:.1f} s"
    assert container.state()["ExitCode"] == 0, container.logs()
    assert "Finished server process" in container.logs()
