"""The container tests' engine, image and containers (a pytest plugin: tests/conftest.py loads it).

The image is built once per run (see tests/container_engine.py for the engine
and the base image). Every container shares the host's network with its own
PORT, and is removed with its volumes at the end of its test. Without a usable
engine the tests that use these fixtures are skipped, and fail under CI=true.
"""

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.container_engine import (
    DockerUnavailable,
    Engine,
    build_app_image,
    free_port,
    start_engine,
)

HEALTH_TIMEOUT_S = 60


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

    def exec(self, *command: str, user: str = "") -> str:
        """Run a command in the running container (as `user` when given); its stdout."""
        options = [f"--user={user}"] if user else []
        return self.engine.docker("exec", *options, self.name, *command).stdout

    def service_ids(self) -> str:
        """`uid gid` of PID 1's only child (the service, once the entrypoint has exec'd it).

        PID 1 is tini, root's, which only passes signals on and reaps.
        """
        (child,) = self.exec("cat", "/proc/1/task/1/children").split()
        status = self.exec("cat", f"/proc/{child}/status")
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        gid = next(line.split()[1] for line in status.splitlines() if line.startswith("Gid:"))
        return f"{uid} {gid}"

    def start(self) -> None:
        self.engine.docker("start", self.name)

    def restart_count(self) -> int:
        return int(self.engine.docker("inspect", "--format={{.RestartCount}}", self.name).stdout)

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


def request_json(
    url: str, method: str = "GET", body: dict | None = None, timeout: float = 5
) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)
