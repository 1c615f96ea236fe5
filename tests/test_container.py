"""The real image, built from this checkout and run by a real Docker engine.

The engine, the image and the containers come from tests/containers.py. Every
container shares the host's network with its own PORT, and is removed with its
volumes at the end of its test. Without a usable engine these tests are
skipped, and fail under CI=true.

Run them alone with `.venv/bin/pytest -m container`.
"""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from app.config import DATABASE_FILE_NAME
from tests.chain import BASELINE, CHAIN, HEAD, InjectedRevision, after, running_upgrade_lines
from tests.container_engine import Engine, build_image_with_revisions
from tests.containers import HEALTH_TIMEOUT_S, Container, Containers, request_json
from tests.legacy_data import (
    LEGACY_SITE,
    LEGACY_TABLES,
    RELEASE_FILES,
    SITE_COLUMNS,
    release_file,
    release_row_checksums,
    sha256_of,
    sqlite_revision,
    sqlite_table_names,
    table_columns,
)

pytestmark = pytest.mark.container

UNFINISHED_JOB_STATUSES = ("queued", "downloading")
INTERRUPTED_MESSAGE = "interrupted by a restart"
# Enough availability rows that adopting the grown single-site file takes seconds here.
LONG_MIGRATION_EXTRA_ROWS = 600_000
COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A host folder to mount at /data, so the test can read the database directly."""
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


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
    assert [row["direction"] for row in report["history"]] == ["upgrade"] * len(CHAIN)
    assert "state:            at head" in human
    assert root_owned == ""


def assert_rows_kept(original: Path, database: Path) -> None:
    """Every row of `original` (an unversioned release file) is in `database`, as served.

    Tables are compared over the original's columns; site columns the original
    lacked hold the only site it can have known.
    """
    assert sqlite_revision(database) == HEAD
    columns = {table: table_columns(original, table) for table in LEGACY_TABLES}
    untouched = {table: columns[table] for table in ("clienttask", "episodeavailability")}
    assert release_row_checksums(database, untouched) == release_row_checksums(original, untouched)
    job_columns = columns["job"]
    assert_same_rows(
        "job",
        as_served(job_columns, table_rows(original, "job", job_columns)),
        as_served(job_columns, table_rows(database, "job", job_columns)),
    )
    for table in LEGACY_TABLES:
        site = SITE_COLUMNS[table]
        if site not in columns[table]:
            assert {row[0] for row in table_rows(database, table, [site])} <= {LEGACY_SITE}


@pytest.mark.parametrize("release", RELEASE_FILES)
def test_released_database_is_adopted_with_every_row(
    containers: Containers, data_dir: Path, release: str
) -> None:
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(release_file(release), database)
    container = containers.run(data_dir)

    assert container.wait_for_health()["revision"] == HEAD
    container.stop()

    assert_rows_kept(release_file(release), database)


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


def logs_after_start(logs: str) -> str:
    """What the service logged: everything after the entrypoint's `starting:` line."""
    marker = "[entrypoint] starting: "
    assert marker in logs, logs
    return logs.split(marker, 1)[1]


def test_one_upgrade_per_start_and_none_by_the_service(containers: Containers) -> None:
    volume = containers.volume()
    first = containers.run(volume)
    first.wait_for_health()
    first.stop()
    second = containers.run(volume)
    second.wait_for_health()

    first_logs, second_logs = first.logs(), second.logs()
    assert first_logs.count("upgrading the database schema: alembic upgrade head") == 1
    assert all(first_logs.count(line) == 1 for line in running_upgrade_lines(BASELINE))
    for service_logs in (logs_after_start(first_logs), logs_after_start(second_logs)):
        assert "Running upgrade" not in service_logs
        assert "Database is up to date" not in service_logs
    assert f"the database schema is at head ({HEAD}): nothing to upgrade" in second_logs
    assert "alembic" not in second_logs.split("[entrypoint] starting: ")[0].lower()


def owners(container: Container, *paths: str) -> dict[str, str]:
    output = container.exec("stat", "--format=%n %u:%g", *paths)
    return dict(line.rsplit(" ", 1) for line in output.splitlines())


@pytest.mark.parametrize("recursive", ["true", "false"])
def test_the_app_user_owns_its_data_and_download_folders_and_nothing_of_the_code(
    containers: Containers, recursive: str
) -> None:
    container = containers.run(
        containers.volume(),
        CHOWN_RECURSIVE=recursive,
        PUID="1500",
        PGID="1600",
        DOWNLOAD_DIR="/data/downloads/anime",
        QBIT_PUBLIC_SAVE_PATH="/srv/torrents/anime",
    )
    container.wait_for_health()

    assert container.service_ids() == "1500 1600"
    theirs = ("/data", f"/data/{DATABASE_FILE_NAME}", "/data/downloads", "/data/downloads/anime")
    created_outside = ("/srv/torrents", "/srv/torrents/anime")
    assert set(owners(container, *theirs, *created_outside).values()) == {"1500:1600"}
    assert owners(container, "/", "/app", "/app/app/main.py", "/app/migrations/versions") == {
        "/": "0:0",
        "/app": "0:0",
        "/app/app/main.py": "0:0",
        "/app/migrations/versions": "0:0",
    }
    assert container.exec("find", "/app", "-user", "1500", "-o", "-group", "1600") == ""
    refused = container.exec(
        "sh", "-c", "touch /app/migrations/versions/x.py 2>/dev/null || echo refused", user="1500"
    )
    assert refused.strip() == "refused"


def test_started_with_user_root_the_service_still_runs_as_the_app_user(
    containers: Containers,
) -> None:
    container = containers.run(containers.volume(), "--user=0:0")
    container.wait_for_health()

    assert container.service_ids() == "1000 1000"


def test_started_with_another_user_the_service_runs_as_that_user(
    containers: Containers, data_dir: Path
) -> None:
    os.chown(data_dir, 2500, 2500)
    container = containers.run(data_dir, "--user=2500:2500")

    assert container.wait_for_health()["revision"] == HEAD
    assert container.service_ids() == "2500 2500"
    assert (data_dir / DATABASE_FILE_NAME).stat().st_uid == 2500


def grown_single_site_file(path: Path, extra_rows: int) -> Path:
    """The real single-site release file with `extra_rows` more availability rows."""
    shutil.copyfile(release_file("v1.16.1.db"), path)
    connection = sqlite3.connect(path)
    try:
        connection.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO episodeavailability (slug, season, episode, language, available, "
            "height, vcodec, provider, checked_at, extra) "
            "SELECT 'grown-' || (i / 1000), 1 + i % 7, i % 1000, 'German Dub', i % 2, 1080, "
            "'h264', 'VOE', '2025-01-01 00:00:00.000000', 'null' FROM n",
            (extra_rows,),
        )
        connection.commit()
    finally:
        connection.close()
    return path


def wait_for_log(container: Container, text: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while text not in container.logs():
        if time.monotonic() > deadline or not container.state()["Running"]:
            pytest.fail(f"{text!r} never appeared:\n{container.logs()}")
        time.sleep(0.05)


def test_docker_stop_during_a_long_migration_then_a_start_that_completes(
    containers: Containers, data_dir: Path, tmp_path: Path
) -> None:
    original = grown_single_site_file(tmp_path / "grown.db", LONG_MIGRATION_EXTRA_ROWS)
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(original, database)
    tables = {table: table_columns(original, table) for table in LEGACY_TABLES}
    container = containers.run(data_dir)
    wait_for_log(container, "Backed up")

    took = container.stop()

    logs = container.logs()
    assert "stopped during the database upgrade" in logs, logs
    assert "Traceback" not in logs
    assert took < 10, f"docker stop took {took:.1f} s"
    assert release_row_checksums(database, tables) == release_row_checksums(original, tables)
    assert "alembic_version" not in sqlite_table_names(database)

    container.start()
    container.wait_for_health(timeout=300)
    container.stop()
    assert_rows_kept(original, database)


FAILING_REVISION = "fa11ed000001"


@pytest.fixture(scope="session")
def failing_image(engine: Engine, image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image plus a revision after head that changes the schema, then fails."""
    body = (
        '    op.add_column("job", sa.Column("doomed", sa.Integer(), nullable=True))\n'
        '    op.execute("SELECT * FROM table_that_does_not_exist")'
    )
    failing = InjectedRevision(FAILING_REVISION, "Fails on purpose (container tests)", body)
    tag = f"{image}-failing-revision"
    return build_image_with_revisions(engine, image, [failing], tag, listed=False)


def backups_of(data_dir: Path) -> dict[str, str]:
    return {path.name: sha256_of(path) for path in sorted((data_dir / "backups").iterdir())}


def test_failing_revision_in_a_restart_loop_keeps_the_earlier_backups(
    containers: Containers, data_dir: Path, failing_image: str
) -> None:
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(release_file("v2.1.0.db"), database)
    first = containers.run(data_dir, DB_BACKUP_KEEP="2")
    first.wait_for_health()
    first.stop()
    earlier = backups_of(data_dir)
    tables = {table: table_columns(database, table) for table in LEGACY_TABLES}
    rows_before = release_row_checksums(database, tables)

    looping = containers.run(
        data_dir, "--restart=on-failure", image=failing_image, DB_BACKUP_KEEP="2"
    )
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while looping.restart_count() < 4:
        assert time.monotonic() < deadline, looping.logs()
        time.sleep(0.2)
    looping.stop()

    logs = looping.logs()
    assert logs.count(f"Running upgrade {HEAD} -> {FAILING_REVISION}") >= 4
    assert "Traceback" not in logs
    now = backups_of(data_dir)
    assert {name: now[name] for name in earlier} == earlier
    assert len(now) == 2, now
    assert sqlite_revision(database) == HEAD
    assert "doomed" not in table_columns(database, "job")
    assert release_row_checksums(database, tables) == rows_before

    healthy_again = containers.run(data_dir, DB_BACKUP_KEEP="2")
    assert healthy_again.wait_for_health()["revision"] == HEAD


@pytest.mark.postgres
def test_the_app_container_uses_the_hosts_postgresql(
    containers: Containers, postgres_url: URL
) -> None:
    database_url = postgres_url.render_as_string(hide_password=False)
    volume = containers.volume()
    first = containers.run(volume, DATABASE_URL=database_url)
    assert first.wait_for_health() == {"status": "ok", "database": "postgresql", "revision": HEAD}
    job = request_json(first.url("/jobs"), "POST", {})
    first.stop()

    second = containers.run(volume, DATABASE_URL=database_url)
    second.wait_for_health()
    assert request_json(second.url(f"/jobs/{job['id']}"))["id"] == job["id"]
    assert "Running upgrade" not in second.logs()
    engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            stamped = connection.execute(sa.text("SELECT version_num FROM alembic_version"))
            assert stamped.scalars().all() == [HEAD]
    finally:
        engine.dispose()


def docker_compose(*args: str) -> subprocess.CompletedProcess:
    """docker-compose on docker/compose.yaml (no engine needed for `config`)."""
    if shutil.which("docker-compose") is None:
        message = "docker-compose is not installed (apt-get install docker-compose)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        ["docker-compose", "--file", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("profile", [[], ["--profile", "postgres"]], ids=["default", "postgres"])
def test_compose_file_is_valid(profile: list[str]) -> None:
    """`docker-compose config` checks the file against the Compose schema; no engine needed.

    (docker-compose 1.29 lists every service whatever the profile; which one the
    profile gates is checked in tests/test_entrypoint.py.)
    """
    checked = docker_compose(*profile, "config", "--quiet")
    assert checked.returncode == 0, checked.stderr
    services = docker_compose(*profile, "config", "--services")
    assert sorted(services.stdout.split()) == ["anibridge", "postgres"]
    volumes = docker_compose(*profile, "config", "--volumes")
    assert sorted(volumes.stdout.split()) == ["anibridge-data", "postgres-data"]


# --- anibridge plan, before an upgrade (docker/README.md "Before you upgrade") ---


def plan_in_container(containers: Containers, data: Path, *arguments: str):
    """`docker run --rm -v DATA:/data IMAGE anibridge plan ...`, as docker/README.md shows it."""
    return containers.engine.docker(
        "run",
        "--rm",
        "--network=none",
        f"--volume={data}:/data",
        containers.image,
        "anibridge",
        "plan",
        *arguments,
        check=False,
        timeout=180,
    )


@pytest.mark.parametrize("release", RELEASE_FILES)
def test_plan_in_the_image_on_each_release_file_changes_nothing(
    containers: Containers, data_dir: Path, release: str
) -> None:
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(release_file(release), database)
    before = (sha256_of(database), database.stat().st_mode, database.stat().st_mtime_ns)

    text = plan_in_container(containers, data_dir)
    report = plan_in_container(containers, data_dir, "--json")

    assert text.returncode == 2, text.stdout + text.stderr
    assert text.stdout.startswith("An upgrade would adopt this database made before migrations")
    assert "Traceback" not in text.stderr + report.stderr
    planned = json.loads(report.stdout)
    assert (report.returncode, planned["outcome"], planned["pending"]) == (
        2,
        "upgrade",
        after(BASELINE),
    )
    assert planned["adopts"]["revision"] == BASELINE
    assert (sha256_of(database), database.stat().st_mode, database.stat().st_mtime_ns) == before
    left = {path.name for path in data_dir.iterdir()} - {"downloads"}  # the entrypoint's folder
    assert left == {DATABASE_FILE_NAME}
    assert "alembic_version" not in sqlite_table_names(database)


def test_plan_in_the_image_exit_codes_at_head_and_when_newer(
    containers: Containers, data_dir: Path
) -> None:
    database = data_dir / DATABASE_FILE_NAME
    shutil.copyfile(release_file("v2.1.0.db"), database)
    upgraded = containers.run(data_dir)
    upgraded.wait_for_health()
    upgraded.stop()

    at_head = plan_in_container(containers, data_dir)
    assert at_head.returncode == 0, at_head.stdout + at_head.stderr
    assert at_head.stdout.startswith(f"Nothing to do: the database is at head ({HEAD}).")

    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    connection.close()
    newer = plan_in_container(containers, data_dir)
    assert newer.returncode == 1, newer.stdout + newer.stderr
    assert newer.stdout.startswith("An upgrade would be refused: the database is newer")
