"""A Docker engine and the app's image, for the container tests and the container benchmark.

`start_engine` uses the engine at DOCKER_HOST (or the default socket) when one
answers. Otherwise, as root, it starts a private `dockerd` with its own data
root, socket and pid file under ENGINE_ROOT (one per checkout), without a
bridge network or iptables rules: containers then share the host's network
(`--network host`), and each one gets its own PORT. `Engine.stop` ends only a daemon it started,
by its pid. The data root is kept between runs, so the base image and the
build cache are reused.

`build_app_image` builds `docker/Dockerfile`. When `python:3.11-slim` is
neither present nor pullable (no registry reachable), it is first built from
Debian packages by `docker/stand-in-base.sh`. `build_image_with_revisions`
derives from it the image of a later release: the same code with more revision
files. `build_image_before` builds the code as it was before a file came in,
from git history (a full clone, as CI makes).
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.chain import InjectedRevision, copy_project, plant_revisions

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
STAND_IN_BASE = REPO_ROOT / "docker" / "stand-in-base.sh"
BASE_IMAGE = "python:3.11-slim"
# Per checkout: runs from two clones on one machine neither share a private daemon
# (the one that started it would stop it under the other) nor overwrite each other's image.
CHECKOUT_ID = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:10]
APP_IMAGE = f"anibridge:test-{CHECKOUT_ID}"
DEFAULT_HOST = "unix:///var/run/docker.sock"
ENGINE_ROOT = Path(
    os.environ.get("ANIBRIDGE_DOCKER_ROOT", f"/var/tmp/anibridge-docker-{CHECKOUT_ID}")
)
ENGINE_START_TIMEOUT_S = 60
BUILD_TIMEOUT_S = 900


class DockerUnavailable(Exception):
    """No Docker engine can be used or started here; the message says why."""


class DockerCommandError(RuntimeError):
    """A docker command failed; the message ends with the last lines it printed."""


@dataclass
class Engine:
    """A Docker engine to run `docker` against, and the daemon if this process started it."""

    host: str
    daemon: subprocess.Popen | None = None

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run the docker command line against this engine; output captured as text."""
        result = subprocess.run(
            ["docker", *args],
            env={**os.environ, "DOCKER_HOST": self.host},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            raise DockerCommandError(
                f"docker {args[0]} exited {result.returncode}: " + "\n".join(output[-20:])
            )
        return result

    def answers(self) -> bool:
        try:
            return self.docker("version", check=False, timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """Stop the daemon this process started (by its pid); leave any other one alone."""
        if self.daemon is None or self.daemon.poll() is not None:
            return
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()


def start_engine() -> Engine:
    """An engine that answers: the configured one, else a private dockerd started here."""
    if shutil.which("docker") is None:
        raise DockerUnavailable(
            "the docker command line is not installed (apt-get install docker.io)"
        )
    configured = Engine(os.environ.get("DOCKER_HOST", DEFAULT_HOST))
    if configured.answers():
        return configured
    private = Engine(f"unix://{ENGINE_ROOT / 'docker.sock'}")
    if private.answers():
        return private
    return start_private_daemon(private.host)


def start_private_daemon(host: str) -> Engine:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine answers and dockerd is not installed")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine answers, and starting dockerd needs root")
    ENGINE_ROOT.mkdir(parents=True, exist_ok=True)
    log_path = ENGINE_ROOT / "dockerd.log"
    with log_path.open("ab") as log:
        daemon = subprocess.Popen(
            [
                dockerd,
                f"--data-root={ENGINE_ROOT / 'data'}",
                f"--exec-root={ENGINE_ROOT / 'exec'}",
                f"--pidfile={ENGINE_ROOT / 'dockerd.pid'}",
                f"--host={host}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(host, daemon)
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while not engine.answers():
        if daemon.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            raise DockerUnavailable(f"dockerd did not start: {last_line(log_path)}")
        time.sleep(0.5)
    return engine


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"nothing in {path}"


def ensure_base_image(engine: Engine) -> None:
    """Have `python:3.11-slim`: already there, pulled, or else the Debian-built stand-in."""
    if engine.docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    if engine.docker("pull", BASE_IMAGE, check=False, timeout=300).returncode == 0:
        return
    subprocess.run(
        [str(STAND_IN_BASE), BASE_IMAGE],
        env={**os.environ, "DOCKER_HOST": engine.host},
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )


def build_app_image(engine: Engine, tag: str = APP_IMAGE, source: Path = REPO_ROOT) -> str:
    """Build the app's image from `source`, this checkout by default, and return its tag.

    The build cache is used.
    """
    ensure_base_image(engine)
    engine.docker(
        "build",
        "--network=host",
        f"--file={source / DOCKERFILE.relative_to(REPO_ROOT)}",
        f"--tag={tag}",
        str(source),
        timeout=BUILD_TIMEOUT_S,
    )
    return tag


def build_image_before(engine: Engine, path: str, tag: str) -> str:
    """The image of this checkout's code as it was before `path` was added, by git; returns `tag`.

    The tree of the parent of the commit that added `path`: the release whose
    replicas still serve while the first replica with `path` upgrades the
    database. A file names the release, not a revision, so the image stays
    the same as revisions are added after it.
    """
    with tempfile.TemporaryDirectory(prefix="anibridge-previous-") as folder:
        archive = Path(folder) / "tree.tar"
        git("archive", f"--output={archive}", f"{commit_that_added(path)}^")
        tree = Path(folder) / "tree"
        tree.mkdir()
        shutil.unpack_archive(archive, tree, filter="data")
        return build_app_image(engine, tag, source=tree)


def commit_that_added(path: str) -> str:
    """The last commit that added `path`."""
    commit = git("log", "-1", "--diff-filter=A", "--format=%H", "--", path)
    if not commit:
        raise RuntimeError(f"no commit added {path}: use a full git clone")
    return commit


def git(*args: str) -> str:
    """A git command's output in this checkout, stripped; its error when it fails."""
    result = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {args[0]} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def build_image_with_revisions(
    engine: Engine,
    image: str,
    revisions: Sequence[InjectedRevision | Path],
    tag: str,
    *,
    listed: bool,
) -> str:
    """`image` with `revisions` added to /app/migrations/versions after its head; returns `tag`.

    They are planted (tests/chain.py) in a copy of this checkout, the one the
    image is built from, and the files written there are added to the image.

    `listed`: the image's manifest is updated to list them, as a release's is (the
    suite fails a checkout whose manifest is stale). Unlisted, the start-up check
    finds files the manifest does not vouch for and runs the full upgrade.
    """
    steps = [f"FROM {image}", "COPY *.py /app/migrations/versions/"]
    if listed:
        steps.append("RUN python -m app.migration.authoring.manifest update")
    steps.append("RUN python -m compileall -q /app/migrations")
    with (
        tempfile.TemporaryDirectory(prefix="anibridge-image-") as context,
        tempfile.TemporaryDirectory(prefix="anibridge-project-") as scratch,
    ):
        for path in plant_revisions(copy_project(Path(scratch)), revisions):
            shutil.copy2(path, Path(context) / path.name)
        (Path(context) / "Dockerfile").write_text("\n".join(steps) + "\n")
        engine.docker("build", "--network=host", f"--tag={tag}", context, timeout=300)
    return tag


def free_port() -> int:
    """A TCP port nothing listens on now (containers share the host's network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
