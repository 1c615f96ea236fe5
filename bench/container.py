"""6. Container start at head: `docker start` until /health answers, against no migration step.

The image is built from this checkout (tests/container_engine.py: the Docker
engine at DOCKER_HOST, else a private dockerd; the stand-in base image where
`python:3.11-slim` cannot be pulled). Every trial starts a container created
beforehand; the clock runs from `docker start` until GET /health answers 200.
On each engine the database is already at head: on SQLite a volume holding the
real multi-site release file, adopted; on PostgreSQL a scratch database on the
host's server (BENCH_POSTGRES_URL, default the local trust-auth server; the
containers share the host's network), created here and dropped afterwards.
Trials, taking turns:

* the floor: the same image with DB_MIGRATE_ON_STARTUP=false (no migration step);
* the image as shipped: on SQLite the start-up step's fast check, on PostgreSQL
  the service's own check in its process; neither upgrades at head;
* on SQLite, the same without the fast check (a derived image whose
  `app.migration.at_head` never vouches), so `alembic upgrade head` runs at
  every start: what the check saves.
"""

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.common import (
    Figure,
    Report,
    Sample,
    measure_interleaved,
    ratio,
    scratch_dir,
    scratch_postgres_database,
)
from tests.container_engine import Engine, build_app_image, free_port, start_engine
from tests.legacy_data import release_file

TARGET_RATIO = 1.10
HEALTH_TIMEOUT_S = 60
POLL_INTERVAL_S = 0.005
NEVER_AT_HEAD = "\n\ndef database_at_head(*_args, **_kwargs):\n    return None\n"
SQLITE_TRIALS = (
    "SQLite floor: DB_MIGRATE_ON_STARTUP=false",
    "SQLite as shipped: fast check, no upgrade",
    "SQLite without the fast check: alembic",
)
POSTGRES_TRIALS = (
    "PostgreSQL floor: DB_MIGRATE_ON_STARTUP=false",
    "PostgreSQL as shipped: the service's check",
)


def run(quick: bool, runs: int) -> Report:
    report = Report("6. Container start at head (docker start -> /health)")
    with running_engine() as engine:
        image = build_app_image(engine)
        without_check = build_without_fast_check(engine, image)
        report.lines.append(f"  image: {image}, base {base_image_description(engine, image)}")
        with volume_at_head(engine, image) as volume, postgres_at_head(engine, image) as url:

            def trial(trial_image: str, **environ: str) -> Callable[[], Sample]:
                return lambda: time_start_to_health(engine, trial_image, volume, environ)

            off = {"DB_MIGRATE_ON_STARTUP": "false"}
            trials = (
                trial(image, **off),
                trial(image),
                trial(without_check),
                trial(image, DATABASE_URL=url, **off),
                trial(image, DATABASE_URL=url),
            )
            figures = measure_interleaved(
                runs, dict(zip(SQLITE_TRIALS + POSTGRES_TRIALS, trials, strict=True))
            )
    sqlite_floor, sqlite_shipped, unchecked, postgres_floor, postgres_shipped = figures.values()
    for figure in (sqlite_floor, sqlite_shipped, unchecked):
        report.add(figure, sqlite_floor)
    for figure in (postgres_floor, postgres_shipped):
        report.add(figure, postgres_floor)
    report.lines.append(
        "  the fast check saves "
        f"{(unchecked.seconds - sqlite_shipped.seconds) * 1e3:.0f} ms per SQLite start"
    )
    check_ratio(report, "SQLite", sqlite_shipped, sqlite_floor)
    check_ratio(report, "PostgreSQL", postgres_shipped, postgres_floor)
    return report


def check_ratio(report: Report, engine_name: str, shipped: Figure, floor: Figure) -> None:
    report.check(
        f"{engine_name} start at head <= {TARGET_RATIO}x DB_MIGRATE_ON_STARTUP=false",
        ratio(shipped, floor) <= TARGET_RATIO,
        f"{ratio(shipped, floor):.2f}x ({shipped.seconds * 1e3:.0f} ms vs "
        f"{floor.seconds * 1e3:.0f} ms)",
    )


@contextmanager
def running_engine() -> Iterator[Engine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        engine.stop()


def base_image_description(engine: Engine, image: str) -> str:
    """The base image's Python and OS, read from the built image itself."""
    return engine.docker(
        "run",
        "--rm",
        "--network=host",
        "--entrypoint=sh",
        image,
        "-c",
        '. /etc/os-release; echo "$PRETTY_NAME, Python $(python -c '
        "'import platform; print(platform.python_version())')\"",
    ).stdout.strip()


def build_without_fast_check(engine: Engine, image: str) -> str:
    """`image` whose `database_at_head` never says "at head" (redefined at the module's end)."""
    tag = f"{image}-without-fast-check"
    with scratch_dir("container") as context:
        (context / "never_at_head.py").write_text(NEVER_AT_HEAD)
        (context / "Dockerfile").write_text(
            f"FROM {image}\nCOPY never_at_head.py /tmp/\n"
            "RUN cat /tmp/never_at_head.py >> /app/app/migration/at_head.py\n"
        )
        engine.docker("build", "--network=host", f"--tag={tag}", str(context), timeout=300)
    return tag


@contextmanager
def volume_at_head(engine: Engine, image: str) -> Iterator[str]:
    """A volume holding the multi-site release file, adopted and at head."""
    volume = f"anibridge-bench-{uuid.uuid4().hex[:12]}"
    engine.docker("volume", "create", volume)
    try:
        seed = release_file("v2.1.0.db")
        engine.docker(
            "run",
            "--rm",
            "--network=host",
            f"--volume={volume}:/data",
            f"--volume={seed.parent}:/seed:ro",
            image,
            "sh",
            "-c",
            f"cp /seed/{seed.name} /data/anibridge_jobs.db",
        )
        engine.docker(
            "run",
            "--rm",
            "--network=host",
            f"--volume={volume}:/data",
            image,
            "anibridge",
            "migrate",
        )
        yield volume
    finally:
        engine.docker("volume", "rm", "--force", volume, check=False)


@contextmanager
def postgres_at_head(engine: Engine, image: str) -> Iterator[str]:
    """A scratch database on the host's PostgreSQL, brought to head by the image; its URL."""
    with scratch_postgres_database() as database:
        url = database.render_as_string(hide_password=False)
        engine.docker(
            "run",
            "--rm",
            "--network=host",
            f"--env=DATABASE_URL={url}",
            image,
            "anibridge",
            "migrate",
        )
        yield url


def time_start_to_health(
    engine: Engine, image: str, volume: str, environ: dict[str, str]
) -> Sample:
    port = free_port()
    settings = {"PORT": str(port), **environ}
    name = engine.docker(
        "create",
        "--network=host",
        f"--volume={volume}:/data",
        *(f"--env={key}={value}" for key, value in settings.items()),
        image,
    ).stdout.strip()
    try:
        started = time.perf_counter()
        engine.docker("start", name)
        wait_for_health(f"http://127.0.0.1:{port}/health", name, engine)
        return Sample(time.perf_counter() - started)
    finally:
        engine.docker("rm", "--force", name, check=False)


def wait_for_health(url: str, name: str, engine: Engine) -> None:
    deadline = time.perf_counter() + HEALTH_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(POLL_INTERVAL_S)
    logs = engine.docker("logs", name, check=False)
    raise RuntimeError(f"{url} did not answer in {HEALTH_TIMEOUT_S} s:\n{logs.stdout}{logs.stderr}")
