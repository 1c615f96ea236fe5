"""Several replicas on one PostgreSQL database, upgraded while they serve (docs/replicas.md).

The real image (tests/containers.py) against a scratch database on the host's
server, with images of two later releases derived from it: one more revision
(`EXPAND`, tests/expand_contract.py), then one more again (`CONTRACT`). Each
derived image lists its revisions in its manifest, as a release's image does.

* Rolling upgrade: two containers of the current image serve a `job` table of
  1,000,000 rows under continuous requests while a container of the expand
  image upgrades the database; every request succeeds and none takes 1 s.
  Then, the old replicas gone, a container of the contract image completes
  the change while the expand replica keeps serving.
* Simultaneous start: three containers of the expand image started at once
  against one database at the released head apply the revision once.
* The old release's jobs: two containers of the code before the newest
  revision (git history, tests/container_engine.py) run queued and
  downloading jobs while a container of this checkout upgrades the database;
  their clients then finish those jobs through them, and none is failed by
  the new replica's start or its heartbeat. A container of the release after
  (this checkout plus the contract fixture in tests/data/rolling/) then fails
  the jobs the old replicas left unfinished, and only those.
"""

import random
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.chain import CHAIN, HEAD
from tests.container_engine import (
    Engine,
    build_image_before,
    build_image_with_revisions,
)
from tests.containers import Container, Containers, request_json
from tests.expand_contract import (
    CONTRACT,
    EXPAND,
    index_is_valid,
    insert_jobs,
    job_id,
    revision_file,
    upgrades_recorded,
)

pytestmark = [pytest.mark.container, pytest.mark.postgres]

ROLLING_JOBS = 1_000_000
SIMULTANEOUS_JOBS = 100_000
SLOWEST_REQUEST_S = 1.0
CLIENTS_PER_CONTAINER = 2
REQUEST_TIMEOUT_S = 10
UPGRADE_TIMEOUT_S = 240
SETTLE_S = 1.0
"""Traffic runs this long before the upgrade starts and after it has finished."""
MIN_REQUESTS_DURING_UPGRADE = 100
OWNERS_CONTRACT = "c0a5e0000003"
"""tests/data/rolling/: fails the unfinished jobs of the release before job owners."""
OLD_RELEASE_JOBS = 10_000
RUNNING_JOBS = 20
"""Started through the old replicas before the upgrade: half queued, half downloading."""
INTERRUPTED = "interrupted by a restart"


@pytest.fixture(scope="session")
def expand_image(engine: Engine, image: str) -> str:
    """The next release's image: the current one plus the expand revision."""
    return build_image_with_revisions(
        engine, image, [revision_file(EXPAND)], f"{image}-expand", listed=True
    )


@pytest.fixture(scope="session")
def contract_image(engine: Engine, image: str) -> str:
    """The release after it: the expand and the contract revisions."""
    files = [revision_file(EXPAND), revision_file(CONTRACT)]
    return build_image_with_revisions(engine, image, files, f"{image}-contract", listed=True)


@pytest.fixture(scope="session")
def previous_image(engine: Engine, image: str) -> str:
    """The release before the newest revision: this checkout's code before it came in."""
    return build_image_before(engine, "app/data/leases.py", f"{image}-previous")


@pytest.fixture(scope="session")
def owners_contract_image(engine: Engine, image: str) -> str:
    """The release after this checkout: the contract that fails the unowned jobs."""
    files = [revision_file(OWNERS_CONTRACT)]
    return build_image_with_revisions(engine, image, files, f"{image}-owners", listed=True)


# --- traffic -----------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    what: str
    started: float
    seconds: float
    outcome: str
    """`ok`, the HTTP status of a refusal, or the error the client met."""

    @property
    def succeeded(self) -> bool:
        return self.outcome == "ok"


def timed_request(what: str, url: str, method: str = "GET", body: dict | None = None) -> tuple:
    """(Request, JSON answer or None): one request, timed, whatever happens to it."""
    started = time.monotonic()
    answer, outcome = None, "ok"
    try:
        answer = request_json(url, method, body, timeout=REQUEST_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        outcome = str(exc.code)
    except OSError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    return Request(what, started, time.monotonic() - started, outcome), answer


@dataclass
class Traffic:
    """Clients sending the service's everyday requests to containers until stopped.

    Each client, in turn: create a job, read it, update it, list the latest
    jobs, and read one of the loaded jobs.
    """

    containers: list[Container]
    loaded_jobs: int
    requests: list[Request] = field(default_factory=list)
    created_ids: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> "Traffic":
        for container in self.containers * CLIENTS_PER_CONTAINER:
            thread = threading.Thread(target=self.client, args=(container,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT_S * 5)

    def client(self, container: Container) -> None:
        chance = random.Random()
        while not self.stopping.is_set():
            request, job = timed_request("create", container.url("/jobs"), "POST", {})
            self.requests.append(request)
            if job is None:
                continue
            self.created_ids.append(job["id"])
            loaded = job_id(chance.randint(1, self.loaded_jobs))
            for what, path, method, body in (
                ("read", f"/jobs/{job['id']}", "GET", None),
                ("update", f"/jobs/{job['id']}", "PATCH", {"progress": 42.0}),
                ("list", "/jobs?limit=20", "GET", None),
                ("read loaded", f"/jobs/{loaded}", "GET", None),
            ):
                self.requests.append(timed_request(what, container.url(path), method, body)[0])

    def between(self, start: float, end: float) -> list[Request]:
        """The requests that were under way at some moment from `start` to `end`."""
        return [r for r in self.requests if r.started <= end and r.started + r.seconds >= start]


def summary(requests: list[Request]) -> str:
    if not requests:
        return "no requests"
    seconds = sorted(request.seconds for request in requests)
    p99 = seconds[int(len(seconds) * 0.99)]
    return (
        f"{len(requests)} requests, {sum(not r.succeeded for r in requests)} failed; "
        f"median {statistics.median(seconds) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
        f"slowest {seconds[-1] * 1e3:.0f} ms"
    )


def assert_served_throughout(traffic: Traffic, upgrade: tuple[float, float], label: str) -> None:
    """Every request succeeded, and none under way during the upgrade took 1 s or more."""
    during = traffic.between(*upgrade)
    print(f"{label}: upgrade {upgrade[1] - upgrade[0]:.1f} s; during it: {summary(during)}")
    print(f"{label}: whole traffic: {summary(traffic.requests)}")
    failed = [request for request in traffic.requests if not request.succeeded]
    assert not failed, f"{len(failed)} requests failed, the first: {failed[0]}"
    assert len(during) >= MIN_REQUESTS_DURING_UPGRADE, summary(during)
    slowest = max(during, key=lambda request: request.seconds)
    assert slowest.seconds < SLOWEST_REQUEST_S, f"slowest during the upgrade: {slowest}"


def roll_out(
    containers: Containers,
    image: str,
    serving: list[Container],
    revisions: tuple[str, str],
    settings: dict[str, str],
    loaded_jobs: int = ROLLING_JOBS,
) -> tuple[Container, Traffic]:
    """Start a container of `image` while `serving` answer traffic, until it serves.

    Every request must succeed, none under way during the upgrade may take 1 s,
    and the new container must have upgraded from `revisions[0]` to `revisions[1]`.
    `loaded_jobs`: how many jobs `insert_jobs` loaded (the clients read them).
    """
    with Traffic(serving, loaded_jobs) as traffic:
        time.sleep(SETTLE_S)
        started = time.monotonic()
        upgrading = containers.run(containers.volume(), image=image, **settings)
        health = upgrading.wait_for_health(timeout=UPGRADE_TIMEOUT_S)
        finished = time.monotonic()
        time.sleep(SETTLE_S)
    assert health["revision"] == revisions[1], health
    assert_served_throughout(traffic, (started, finished), f"upgrade to {revisions[1]}")
    assert upgrading.logs().count(running_upgrade(*revisions)) == 1, upgrading.logs()
    return upgrading, traffic


# --- reading the database -------------------------------------------------------


@pytest.fixture
def database(postgres_url: URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(postgres_url, poolclass=NullPool)
    yield engine
    engine.dispose()


def scalar(database: sa.Engine, query: str, **parameters: object) -> object:
    with database.connect() as connection:
        return connection.execute(sa.text(query), parameters).scalar()


def priority_column(database: sa.Engine) -> tuple[str, str | None]:
    """`is_nullable` and `column_default` of job.fixture_priority."""
    with database.connect() as connection:
        return tuple(
            connection.execute(
                sa.text(
                    "SELECT is_nullable, column_default FROM information_schema.columns "
                    "WHERE table_name = 'job' AND column_name = 'fixture_priority'"
                )
            ).one()
        )


def running_upgrade(revision_from: str, revision_to: str) -> str:
    return f"Running upgrade {revision_from} -> {revision_to}"


# --- scenarios --------------------------------------------------------------------


# 134 s in a whole-suite run here, up to 230 s while other test runs shared the
# 2 cores: most of it the fill of 1,000,000 rows.
@pytest.mark.timeout(600)
def test_rolling_upgrade_keeps_the_old_replicas_serving(
    containers: Containers,
    postgres_url: URL,
    database: sa.Engine,
    expand_image: str,
    contract_image: str,
) -> None:
    settings = {"DATABASE_URL": postgres_url.render_as_string(hide_password=False)}
    first = containers.run(containers.volume(), **settings)
    assert first.wait_for_health()["revision"] == HEAD
    insert_jobs(postgres_url, ROLLING_JOBS)
    second = containers.run(containers.volume(), **settings)
    assert second.wait_for_health()["revision"] == HEAD

    expanded_by, traffic = roll_out(
        containers, expand_image, [first, second], (HEAD, EXPAND), settings
    )

    assert priority_column(database) == ("YES", None)
    with database.connect() as connection:
        assert index_is_valid(connection, "ix_job_fixture_priority")
    unfilled_ids = "SELECT array_agg(id) FROM job WHERE fixture_priority IS NULL"
    unfilled = scalar(database, unfilled_ids) or []
    assert set(unfilled) <= set(traffic.created_ids), "a loaded job was left unfilled"

    first.stop()
    second.stop()
    roll_out(containers, contract_image, [expanded_by], (EXPAND, CONTRACT), settings)

    assert priority_column(database) == ("NO", "0")
    assert scalar(database, "SELECT count(*) FROM job WHERE fixture_priority IS NULL") == 0
    assert scalar(database, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'ck_job%'") == 0
    with database.connect() as connection:
        assert upgrades_recorded(connection, EXPAND) == upgrades_recorded(connection, CONTRACT) == 1


def test_three_replicas_started_at_once_upgrade_once(
    containers: Containers, postgres_url: URL, database: sa.Engine, expand_image: str
) -> None:
    settings = {"DATABASE_URL": postgres_url.render_as_string(hide_password=False)}
    released = containers.run(containers.volume(), **settings)
    assert released.wait_for_health()["revision"] == HEAD
    released.stop()
    insert_jobs(postgres_url, SIMULTANEOUS_JOBS)

    def start() -> Container:
        return containers.run(containers.volume(), image=expand_image, **settings)

    with ThreadPoolExecutor(max_workers=3) as starting:
        replicas = list(starting.map(lambda _: start(), range(3)))

    for replica in replicas:
        assert replica.wait_for_health(timeout=UPGRADE_TIMEOUT_S)["revision"] == EXPAND
    logs = [replica.logs() for replica in replicas]
    upgraded = [log for log in logs if running_upgrade(HEAD, EXPAND) in log]
    assert len(upgraded) == 1, "\n".join(logs)
    assert upgraded[0].count(running_upgrade(HEAD, EXPAND)) == 1, upgraded[0]
    waited = [log for log in logs if log is not upgraded[0]]
    assert all(f"Database is up to date at revision {EXPAND}" in log for log in waited), waited
    with database.connect() as connection:
        assert upgrades_recorded(connection, EXPAND) == 1
    assert scalar(database, "SELECT count(*) FROM job WHERE fixture_priority IS NULL") == 0


def start_jobs(replicas: list[Container], count: int) -> list[str]:
    """`count` jobs created through `replicas` in turn: every other one set downloading."""
    ids = []
    for number in range(count):
        replica = replicas[number % len(replicas)]
        job = request_json(replica.url("/jobs"), "POST", {})
        if number % 2:
            body = {"status": "downloading", "progress": 10.0}
            request_json(replica.url(f"/jobs/{job['id']}"), "PATCH", body)
        ids.append(job["id"])
    return ids


def finish_jobs(replicas: list[Container], ids: list[str]) -> list[Request]:
    """What the old replicas' clients do: report progress, then completion, through them."""
    requests = []
    for number, job in enumerate(ids):
        url = replicas[number % len(replicas)].url(f"/jobs/{job}")
        for body in ({"status": "downloading", "progress": 90.0}, {"status": "completed"}):
            requests.append(timed_request("finish", url, "PATCH", body)[0])
    return requests


def job_counts(database: sa.Engine, ids: list[str]) -> dict[tuple[str, str | None], int]:
    """How many of the jobs `ids` have each (status, message)."""
    query = "SELECT status, message, count(*) FROM job WHERE id = ANY(:ids) GROUP BY 1, 2"
    with database.connect() as connection:
        rows = connection.execute(sa.text(query), {"ids": ids}).all()
    return {(status, message): count for status, message, count in rows}


@pytest.mark.timeout(600)
def test_a_rolling_upgrade_leaves_the_old_replicas_jobs_to_them(
    containers: Containers,
    postgres_url: URL,
    database: sa.Engine,
    previous_image: str,
    owners_contract_image: str,
) -> None:
    settings = {"DATABASE_URL": postgres_url.render_as_string(hide_password=False)}
    old = [containers.run(containers.volume(), image=previous_image, **settings) for _ in "12"]
    [before] = {replica.wait_for_health()["revision"] for replica in old}
    assert before in CHAIN[:-1], before
    insert_jobs(postgres_url, OLD_RELEASE_JOBS)
    running = start_jobs(old, RUNNING_JOBS)

    upgrade = (CHAIN[-2], HEAD)  # the last step of the upgrade, wherever it starts
    new, traffic = roll_out(containers, containers.image, old, upgrade, settings, OLD_RELEASE_JOBS)
    # A second replica of the new release starts while the old ones still run their jobs.
    assert containers.run(containers.volume(), **settings).wait_for_health()["revision"] == HEAD
    finishing = finish_jobs(old, running)

    failed = [request for request in finishing if not request.succeeded]
    assert not failed, f"{len(failed)} of {len(finishing)} requests failed, the first: {failed[0]}"
    assert job_counts(database, running) == {("completed", None): RUNNING_JOBS}
    assert job_counts(database, traffic.created_ids) == {("queued", None): len(traffic.created_ids)}
    assert scalar(database, "SELECT count(*) FROM job WHERE message = :m", m=INTERRUPTED) == 0
    own = request_json(new.url("/jobs"), "POST", {})
    leased = "SELECT lease_expires_at > now() FROM job WHERE id = :id"
    assert own["owner"] and scalar(database, leased, id=own["id"]), own

    for replica in old:
        replica.stop()
    contract = (HEAD, OWNERS_CONTRACT)
    _, later = roll_out(
        containers, owners_contract_image, [new], contract, settings, OLD_RELEASE_JOBS
    )

    left_by_old = {("failed", INTERRUPTED): len(traffic.created_ids)}
    assert job_counts(database, traffic.created_ids) == left_by_old
    assert job_counts(database, running) == {("completed", None): RUNNING_JOBS}
    assert job_counts(database, later.created_ids) == {("queued", None): len(later.created_ids)}
    assert job_counts(database, [own["id"]]) == {("queued", None): 1}
