"""docker/entrypoint.sh, run for real as root with gosu, against throwaway folders.

Each test points the script at a fresh DATA_DIR and at a copy of the project
(the script re-owns APP_DIR, which must not be the repository), runs it with a
cheap command that prints the uid and gid it runs as, and checks the database,
its backups and the ownership of what the script touched. The last tests read
docker/Dockerfile and docker/compose.yaml without Docker (none runs here).

The app user must be able to run a Python interpreter with the project's
packages. When the test venv's interpreter is unreachable for that user (its
base installation under a private /root, for instance), the `app_user_python`
fixture builds one from the system's Python of the same version that loads the
venv's site-packages.
"""

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import DATABASE_FILE_NAME, load_settings
from app.migration.guarded_run import upgrade_database
from tests.chain import BASELINE, HEAD, copy_project
from tests.legacy_data import (
    RELEASE_CHECKSUMS,
    RELEASE_FILES,
    analysed_tables,
    assert_triggers_fire,
    leave_in_write_ahead_log,
    release_file,
    release_row_checksums,
    released_columns,
    user_objects,
    user_objects_expected,
    view_counts,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker" / "compose.yaml"
UNKNOWN_REVISION = "ffffffffffff"
ALEMBIC_FAILURE_STATUS = 255  # the `alembic` command line's exit status for a CommandError
APP_USER = "abtest_user"
APP_GROUP = "abtest_group"
OTHER_USER = "abtest_other"
APP_UID = 4242
OTHER_UID = 4243
STALE_UID = 4244
ACCOUNTS = (APP_USER, OTHER_USER)
GROUPS = (APP_GROUP, OTHER_USER)
ACCOUNTS_LOCK = "/tmp/anibridge-entrypoint-tests.lock"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHOAMI = ["sh", "-c", 'echo "command ran as $(id -u):$(id -g)"']
JOB_ID = "0" * 31 + "7"
JOB_INSERT = (
    "INSERT INTO job (id, status, progress, downloaded_bytes, total_bytes, message, "
    "source_site, created_at, updated_at) VALUES (?, 'completed', 100.0, 10, 10, "
    "'Folge 1 – fertig', 's.to', '2024-05-01 12:30:00', '2024-05-01 12:30:00')"
)


@dataclass(frozen=True)
class Container:
    """The folders one entrypoint run works on, and how to start it."""

    data_dir: Path
    download_dir: Path
    public_save_path: Path
    env: dict[str, str]

    @property
    def database(self) -> Path:
        return self.data_dir / DATABASE_FILE_NAME

    def start(self, command: list[str] = WHOAMI, **environ: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ENTRYPOINT), *command],
            env={**self.env, **environ},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="session")
def gosu() -> str:
    """gosu, as root: skipped locally when either is missing, a failure under CI=true."""
    path = shutil.which("gosu")
    problem = None if path else "gosu is not installed (apt-get install gosu)"
    if os.geteuid() != 0:
        problem = "the entrypoint tests run the script as root"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return path


@pytest.fixture(scope="session")
def shared_root() -> Iterator[Path]:
    """A folder every test user can traverse (pytest's own tmp dirs are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="anibridge-entrypoint-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="session")
def app_dir(shared_root: Path) -> Path:
    """What the image has in /app: the package, the migrations and alembic.ini."""
    return copy_project(shared_root / "app")


def runs_as_app_user(gosu: str, python: str, app_dir: Path) -> bool:
    """Whether `python`, run by the app user in APP_DIR as the entrypoint runs it, loads the
    libraries (alembic loads the project's plugin entry point, app.migration, from there)."""
    probe = [gosu, f"{APP_UID}:{APP_UID}", python, "-c", "import sqlalchemy, alembic"]
    return subprocess.run(probe, capture_output=True, cwd=app_dir).returncode == 0


def venv_for_app_user(shared_root: Path) -> Path:
    """A venv on the system's Python of this version that loads a copy of this venv's packages.

    The packages are copied into the shared folder: the test venv itself may sit
    below a folder only root can enter (a fresh clone in a private temp dir).
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system_python = shutil.which(version, path=SYSTEM_PATH)
    if system_python is None:
        pytest.fail(f"the test venv's Python is not reachable by uid {APP_UID} and no {version}")
    target = shared_root / "venv"
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(target)], check=True)
    packages = shared_root / "site-packages"
    shutil.copytree(sysconfig.get_paths()["purelib"], packages, symlinks=True)
    site_packages = sysconfig.get_paths(vars={"base": str(target)})["purelib"]
    Path(site_packages, "project_venv.pth").write_text(
        f"import site; site.addsitedir({str(packages)!r})\n"
    )
    return target / "bin" / "python"


@pytest.fixture(scope="session")
def app_user_python(gosu: str, shared_root: Path, app_dir: Path) -> str:
    if runs_as_app_user(gosu, sys.executable, app_dir):
        return sys.executable
    python = str(venv_for_app_user(shared_root))
    if not runs_as_app_user(gosu, python, app_dir):
        pytest.fail(f"no Python with the project's packages is runnable by uid {APP_UID}")
    return python


def remove_test_accounts() -> None:
    for user in ACCOUNTS:
        subprocess.run(["userdel", user], capture_output=True)
    for group in GROUPS:
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.fixture(scope="session")
def accounts_lock() -> Iterator[None]:
    """Serialises test runs on one host: they all create the same users and groups."""
    with open(ACCOUNTS_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def accounts(accounts_lock: None) -> Iterator[None]:
    """Removes the users and groups a test (or an interrupted earlier run) created."""
    remove_test_accounts()
    yield
    remove_test_accounts()


@pytest.fixture
def container(
    gosu: str, shared_root: Path, app_dir: Path, app_user_python: str, accounts: None
) -> Container:
    base = Path(tempfile.mkdtemp(dir=shared_root))
    base.chmod(0o755)
    data_dir = base / "data"
    download_dir = base / "downloads" / "anime"
    public_save_path = base / "public"
    env = {
        "PATH": f"{Path(gosu).parent}:{SYSTEM_PATH}",
        "APP_USER": APP_USER,
        "APP_GROUP": APP_GROUP,
        "APP_DIR": str(app_dir),
        "ANIBRIDGE_PYTHON": app_user_python,
        "DATA_DIR": str(data_dir),
        "DOWNLOAD_DIR": str(download_dir),
        "QBIT_PUBLIC_SAVE_PATH": str(public_save_path),
        "PUID": str(APP_UID),
        "PGID": str(APP_UID),
        "CHOWN_RECURSIVE": "true",
    }
    return Container(data_dir, download_dir, public_save_path, env)


def upgrade_in_process(container: Container, revision: str) -> None:
    container.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(load_settings({"DATA_DIR": str(container.data_dir)}), revision)


def query(database: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def execute(database: Path, sql: str, *params: str) -> None:
    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.execute(sql, params)
    finally:
        connection.close()


def assert_at_head(database: Path) -> None:
    assert query(database, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def assert_owner(path: Path, uid: int = APP_UID) -> None:
    info = path.stat()
    assert (info.st_uid, info.st_gid) == (uid, uid), path


def assert_ran_as(result: subprocess.CompletedProcess, uid: int = APP_UID) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"command ran as {uid}:{uid}"]


def getent_ids(database: str, name: str) -> int:
    entry = subprocess.run(["getent", database, name], capture_output=True, text=True, check=True)
    return int(entry.stdout.split(":")[2])


def backups(container: Container) -> list[Path]:
    return sorted((container.data_dir / "backups").glob("*.db"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fresh_start_creates_the_database_at_head_as_the_app_user(container: Container) -> None:
    result = container.start()

    assert_ran_as(result)
    assert_at_head(container.database)
    for path in (container.data_dir, container.database, container.download_dir):
        assert_owner(path)
    assert_owner(container.public_save_path)
    assert "upgrading the database schema" in result.stderr


def test_existing_database_is_upgraded_with_rows_kept_and_a_private_backup(
    container: Container,
) -> None:
    upgrade_in_process(container, BASELINE)
    execute(container.database, JOB_INSERT, JOB_ID)

    result = container.start()

    assert_ran_as(result)
    assert_at_head(container.database)
    assert query(container.database, "SELECT id, message FROM job") == [
        (JOB_ID, "Folge 1 – fertig")
    ]
    (backup,) = backups(container)
    assert BASELINE in backup.name
    assert_owner(backup)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert query(backup, "SELECT version_num FROM alembic_version") == [(BASELINE,)]


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_database_a_release_left_is_adopted_with_every_row_checksum_intact(
    container: Container, name: str
) -> None:
    container.data_dir.mkdir(parents=True)
    shutil.copyfile(release_file(name), container.database)
    columns = released_columns(name)

    result = container.start()

    assert_ran_as(result)
    assert_at_head(container.database)
    assert release_row_checksums(container.database, columns) == RELEASE_CHECKSUMS[name]
    assert_owner(container.database)
    (backup,) = backups(container)
    assert "unversioned" in backup.name
    assert_owner(backup)


@pytest.mark.parametrize("name", RELEASE_FILES)
def test_release_file_with_views_triggers_statistics_and_a_wal_file_keeps_them_all(
    container: Container, name: str
) -> None:
    container.data_dir.mkdir(parents=True)
    shutil.copyfile(release_file(name), container.database)
    additions = ["views", "triggers", "analyze"]
    leave_in_write_ahead_log(container.database, additions)
    views_before = view_counts(container.database)

    result = container.start()

    assert_ran_as(result)
    assert_at_head(container.database)
    assert (
        release_row_checksums(container.database, released_columns(name))
        == (RELEASE_CHECKSUMS[name])
    )
    assert user_objects(container.database) == user_objects_expected(additions)
    assert view_counts(container.database) == views_before
    assert analysed_tables(container.database) >= {"job", "clienttask", "episodeavailability"}
    assert_triggers_fire(container.database)


def test_database_from_a_newer_release_stops_the_start_and_stays_untouched(
    container: Container,
) -> None:
    upgrade_in_process(container, "head")
    execute(container.database, "UPDATE alembic_version SET version_num = ?", UNKNOWN_REVISION)
    before = digest(container.database)

    result = container.start()

    assert result.returncode == ALEMBIC_FAILURE_STATUS
    assert "command ran" not in result.stdout
    assert digest(container.database) == before
    output = result.stdout + result.stderr
    naming_revision = [line for line in output.splitlines() if UNKNOWN_REVISION in line]
    assert len(naming_revision) == 1, output
    assert naming_revision[0].startswith("FAILED: the database is at revision")
    assert "Traceback" not in result.stderr
    assert "the service was not started" in result.stderr
    assert backups(container) == []


@pytest.mark.parametrize("switch", ["false", "OFF", "0", "No"])
def test_migration_can_be_turned_off(container: Container, switch: str) -> None:
    result = container.start(DB_MIGRATE_ON_STARTUP=switch)

    assert_ran_as(result)
    assert container.data_dir.is_dir()
    assert not container.database.exists()
    assert "upgrading the database schema" not in result.stderr


def test_nothing_is_deleted_across_restarts(container: Container) -> None:
    assert_ran_as(container.start())
    execute(container.database, JOB_INSERT, JOB_ID)
    inode, contents = container.database.stat().st_ino, digest(container.database)

    assert_ran_as(container.start())

    assert container.database.stat().st_ino == inode
    assert digest(container.database) == contents
    assert query(container.database, "SELECT id FROM job") == [(JOB_ID,)]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PUID", "abc"), ("PUID", "-1"), ("PGID", "10x"), ("PGID", "99999999999")],
)
def test_invalid_ids_stop_the_start_with_one_line(
    container: Container, variable: str, value: str
) -> None:
    result = container.start(**{variable: value})

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"[entrypoint] error: {variable}='{value}' is not valid: "
        "use a numeric id from 0 to 4294967294"
    ]
    assert result.stdout == ""
    assert not container.data_dir.exists()
    assert subprocess.run(["getent", "passwd", APP_USER], capture_output=True).returncode == 2


def test_uid_and_gid_held_by_another_name_are_shared(container: Container) -> None:
    subprocess.run(["useradd", "--uid", str(OTHER_UID), "--user-group", OTHER_USER], check=True)

    result = container.start(PUID=str(OTHER_UID), PGID=str(OTHER_UID))

    assert_ran_as(result, OTHER_UID)
    assert_owner(container.database, OTHER_UID)
    assert (getent_ids("passwd", APP_USER), getent_ids("group", APP_GROUP)) == (
        OTHER_UID,
        OTHER_UID,
    )


def test_existing_app_user_gets_the_new_ids(container: Container) -> None:
    subprocess.run(["groupadd", "--gid", str(STALE_UID), APP_GROUP], check=True)
    subprocess.run(
        ["useradd", "--uid", str(STALE_UID), "--gid", APP_GROUP, "--no-create-home", APP_USER],
        check=True,
    )

    result = container.start()

    assert_ran_as(result)
    assert_owner(container.database)
    assert (getent_ids("passwd", APP_USER), getent_ids("group", APP_GROUP)) == (APP_UID, APP_UID)
    assert f"changing user {APP_USER} to uid {APP_UID}" in result.stderr


def test_without_recursive_chown_the_database_still_changes_owner(container: Container) -> None:
    upgrade_in_process(container, BASELINE)
    container.download_dir.mkdir(parents=True)
    episode = container.download_dir / "S01E01.mkv"
    episode.write_bytes(b"video")

    result = container.start(CHOWN_RECURSIVE="false")

    assert_ran_as(result)
    assert_at_head(container.database)
    assert_owner(container.database)
    assert_owner(container.download_dir)
    assert (episode.stat().st_uid, episode.stat().st_gid) == (0, 0)


@pytest.fixture
def fake_anibridge(shared_root: Path) -> Path:
    """Stands in for the `anibridge` command: prints its arguments and identity."""
    script = shared_root / "bin" / "anibridge"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        'echo "anibridge $* as $(id -u):$(id -g) migrate=${DB_MIGRATE_ON_STARTUP:-unset}"\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("arguments", [["restore", "backup.db"], ["migrate"]])
def test_restore_and_migrate_run_without_upgrading_first(
    container: Container, fake_anibridge: Path, arguments: list[str]
) -> None:
    upgrade_in_process(container, "head")
    execute(container.database, "UPDATE alembic_version SET version_num = ?", UNKNOWN_REVISION)

    result = container.start([str(fake_anibridge), *arguments])

    assert result.returncode == 0, result.stderr
    shown = f"anibridge {' '.join(arguments)} as {APP_UID}:{APP_UID} migrate=unset"
    assert result.stdout.splitlines() == [shown]
    assert "upgrading the database schema" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DB_MIGRATE_ON_STARTUP", "maybe"), ("CHOWN_RECURSIVE", "2"), ("PORT", "http")],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(
    container: Container, variable: str, value: str
) -> None:
    result = container.start(**{variable: value})

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"[entrypoint] error: {variable}='{value}' is not ")
    assert result.stdout == ""
    assert not container.database.exists()


def test_on_postgresql_the_service_is_left_to_check_and_upgrade_itself(
    container: Container, fake_anibridge: Path
) -> None:
    """The entrypoint neither checks nor upgrades, and does not switch the service's upgrade off."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/never_reached"

    result = container.start([str(fake_anibridge)], DATABASE_URL=url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"anibridge  as {APP_UID}:{APP_UID} migrate=unset"]
    assert "upgrading the database schema" not in result.stderr
    assert "the service checks the schema" in result.stderr


def test_an_unknown_command_is_one_line(container: Container) -> None:
    result = container.start(["no-such-command-here"])

    assert result.returncode == 127
    assert result.stderr.splitlines()[-1] == (
        "[entrypoint] error: cannot run no-such-command-here: No such file or directory"
    )
    assert "Traceback" not in result.stderr


def test_started_without_root_runs_migration_and_command_directly(
    container: Container, gosu: str
) -> None:
    container.data_dir.mkdir()
    os.chown(container.data_dir, APP_UID, APP_UID)
    env = {**container.env, "CHOWN_RECURSIVE": "yes"}
    entrypoint = shutil.copy(ENTRYPOINT, container.data_dir.parent / "entrypoint.sh")

    result = subprocess.run(
        [gosu, f"{APP_UID}:{APP_UID}", entrypoint, *WHOAMI],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert_ran_as(result)
    assert_at_head(container.database)
    assert "skipping user and ownership setup" in result.stderr
    assert subprocess.run(["getent", "passwd", APP_USER], capture_output=True).returncode == 2


def compose_model() -> dict:
    """docker/compose.yaml parsed with PyYAML: in-process, else by the system's Python.

    PyYAML is not a project dependency; CI installs Debian's python3-yaml.
    """
    try:
        import yaml
    except ImportError:
        dump = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
        python = shutil.which("python3", path=SYSTEM_PATH) or "python3"
        parsed = subprocess.run(
            [python, "-c", dump, str(COMPOSE_FILE)], capture_output=True, text=True
        )
        if parsed.returncode != 0:
            message = f"cannot parse {COMPOSE_FILE} without PyYAML: {parsed.stderr.strip()}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        return json.loads(parsed.stdout)
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_keeps_data_in_a_named_volume_with_optional_postgres() -> None:
    model = compose_model()
    service, postgres = model["services"]["anibridge"], model["services"]["postgres"]

    assert "anibridge-data:/data" in service["volumes"]
    assert "anibridge-data" in model["volumes"]
    assert "healthcheck" not in service
    build = COMPOSE_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]
    assert build.resolve() == DOCKERFILE
    assert all(isinstance(value, str) for value in service["environment"].values())
    assert postgres["profiles"] == ["postgres"]
    assert postgres["image"] == "postgres:15"


def test_compose_example_database_url_is_accepted_by_the_app() -> None:
    (line,) = [line for line in COMPOSE_FILE.read_text().splitlines() if "DATABASE_URL:" in line]
    url = line.split("DATABASE_URL:", 1)[1].strip()

    settings = load_settings({"DATABASE_URL": url})

    assert settings.database_url.get_backend_name() == "postgresql"
    assert settings.database_url.host == "postgres"


def test_dockerfile_copies_existing_files_and_keeps_alembic_next_to_the_package() -> None:
    instructions = [line.split() for line in DOCKERFILE.read_text().splitlines() if line]
    copied = [word for words in instructions if words[0] == "COPY" for word in words[1:-1]]

    for source in copied:
        assert (REPO_ROOT / source).exists(), source
    assert {"alembic.ini", "app/", "migrations/"} <= set(copied)
    assert any(words[:2] == ["WORKDIR", "/app"] for words in instructions)
    assert "-e '.[postgres]'" in DOCKERFILE.read_text()
    assert "/health" in DOCKERFILE.read_text()


def test_tini_is_pid_1_and_passes_signals_to_the_whole_process_group() -> None:
    (entrypoint,) = [
        line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT")
    ]
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == [
        "/usr/bin/tini",
        "-g",
        "-e",
        "143",
        "--",
        "/usr/local/bin/docker-entrypoint.sh",
    ]


def test_the_shell_scripts_pass_shellcheck() -> None:
    """Skipped locally without shellcheck; a failure under CI=true, which installs it."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        message = "shellcheck is not installed (apt-get install shellcheck)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    scripts = sorted(str(path) for path in (REPO_ROOT / "docker").glob("*.sh"))
    checked = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert scripts and checked.returncode == 0, checked.stdout + checked.stderr
