"""Every command on a real full disk, and on a read-only data folder.

A small tmpfs is mounted as DATA_DIR (root only: skipped otherwise, or when
the mount fails, and failed instead under CI=true), a database is put in it
in one of the states below, and the rest of the disk is filled with a filler
file, or the tmpfs is remounted read-only. Then each command runs as a
subprocess from the repository's root, as an operator runs it.

What must hold:

* commands that only read (`anibridge status`, `alembic current`, `check`,
  `history`) answer exactly as they do with room to spare;
* a database at head needs no space: `anibridge migrate` (and its kin) exit 0
  and the service starts and answers /health;
* everything that must write fails with one line naming the fix, exit non-zero,
  no traceback;
* either way every file on the disk keeps its bytes, and nothing is left
  behind: no `.restoring`, no half backup, no backup folder. The only files
  a command may add or rewrite are the lock files beside the database, which
  hold nothing or one whole holder line.

A disk that fills while the backup or the restore copies is brought about for
real too: the restore is given less room than its copy needs, and the backup's
`cp` is preceded by a filler that leaves it half the room it needs.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.migration.guarded_run import upgrade_database
from app.migration.sqlite_files import migration_lock_path, service_lock_path
from tests.chain import BASELINE, HEAD
from tests.conftest import settings_for
from tests.legacy_data import (
    REPO_ROOT,
    command_environment,
    failure_line,
    leave_in_write_ahead_log,
    release_file,
    run_command,
)
from tests.test_failure_lines import baseline_database
from tests.test_restore import free_port

DISK_SIZE = "4m"
DATABASE = "anibridge_jobs.db"
RESTORE_SOURCE = release_file("v1.16.1.db")
FILL_CHUNK = b"\0" * 65536
ANIBRIDGE = [sys.executable, "-m", "app.main"]
ALEMBIC = [sys.executable, "-m", "alembic"]
ANIBRIDGE_ERROR = "anibridge: error:"
ALEMBIC_ERROR = "FAILED:"

MIGRATE_COMMANDS = {
    "anibridge migrate": ([*ANIBRIDGE, "migrate"], ANIBRIDGE_ERROR),
    "python -m app.migrate": ([sys.executable, "-m", "app.migrate"], ANIBRIDGE_ERROR),
    "alembic upgrade head": ([*ALEMBIC, "upgrade", "head"], ALEMBIC_ERROR),
}
READING_COMMANDS = {
    "anibridge status": [*ANIBRIDGE, "status"],
    "anibridge status --json": [*ANIBRIDGE, "status", "--json"],
    "alembic current": [*ALEMBIC, "current"],
    "alembic check": [*ALEMBIC, "check"],
    "alembic history": [*ALEMBIC, "history", "-i"],
}


def unavailable(reason: str) -> None:
    """Skip locally; under CI=true a test that cannot run fails."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_SIZE mounted as the data folder, unmounted at the end."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs as the data folder needs root")
    folder = tmp_path / "data"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# --- the states a database is in -----------------------------------------------


def unversioned_release(folder: Path) -> Path:
    """The file v2.1.0 left: adoption and a revision pending."""
    database = folder / DATABASE
    shutil.copyfile(release_file("v2.1.0.db"), database)
    return database


def at_head_with_unfinished_jobs(folder: Path) -> Path:
    """Upgraded (so a backup and the lock file exist); jobs queued and downloading."""
    database = baseline_database(folder)
    upgrade_database(settings_for(URL.create("sqlite", database=str(database)), folder))
    return database


def at_head(folder: Path) -> Path:
    """At head, every job finished: a start has nothing to write."""
    database = at_head_with_unfinished_jobs(folder)
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE job SET status = 'completed' WHERE status IN ('queued', 'downloading')"
        )
    connection.close()
    return database


STATES = {"unversioned": unversioned_release, "baseline": baseline_database, "head": at_head}
PENDING = ("unversioned", "baseline")
UNFINISHED_JOBS = "head, jobs unfinished"
ALL_STATES = {**STATES, UNFINISHED_JOBS: at_head_with_unfinished_jobs}


# --- the disk and what is on it -------------------------------------------------


def fill(folder: Path, leave: int = 0) -> None:
    """Write zeros until the disk is full, then give `leave` bytes back."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, FILL_CHUNK)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - leave)
    assert shutil.disk_usage(folder).free <= leave


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def contents(folder: Path) -> dict[str, str | None]:
    """Every path under `folder` with the sha256 of its bytes (None for a folder)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name] = None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


LOCK_FILES = {migration_lock_path(DATABASE).name, service_lock_path(DATABASE).name}
HOLDER_LINE = re.compile(r"(pid \d+ on host \S+)?")


def assert_nothing_changed(
    folder: Path, before: dict[str, str | None], also_made: frozenset[str] = frozenset()
) -> None:
    """Every file as it was, but for the lock files beside the database (and `also_made`).

    Lock files may be created, and each holds nothing or one holder line (the
    last run's, which the flock makes harmless), never a fragment.
    """
    after = contents(folder)
    assert {name: after.get(name) for name in before if name not in LOCK_FILES} == {
        name: digest for name, digest in before.items() if name not in LOCK_FILES
    }
    assert set(after) - set(before) <= LOCK_FILES | also_made
    for name in LOCK_FILES & set(after):
        assert HOLDER_LINE.fullmatch((folder / name).read_text()), name


FAULTS = {"full disk": fill, "read-only folder": remount_read_only}


def prepared(small_disk: Path, state: str) -> dict[str, str]:
    ALL_STATES[state](small_disk)
    return command_environment(small_disk)


def answers(argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
    result = run_command(argv, environ)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def line_after_fault(
    small_disk: Path, state: str, fault: str, command: tuple[list[str], str], **extra: str
) -> str:
    """Put the database in `state`, bring about `fault`, then run `command`.

    Returns the one line the command failed with, once it is clear that every
    file kept its bytes and nothing was left behind.
    """
    environ = {**prepared(small_disk, state), **extra}
    FAULTS[fault](small_disk)
    before = contents(small_disk)
    argv, marker = command

    line = failure_line(run_command(argv, environ), marker)

    assert_nothing_changed(small_disk, before)
    return line


# --- commands that only read --------------------------------------------------------


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
def test_reading_commands_answer_as_they_did_before_the_fault(
    small_disk: Path, fault: str, state: str, command: str
) -> None:
    environ = prepared(small_disk, state)
    argv = READING_COMMANDS[command]
    healthy = answers(argv, environ)
    FAULTS[fault](small_disk)
    before = contents(small_disk)

    assert answers(argv, environ) == healthy

    assert_nothing_changed(small_disk, before)


# --- a full disk ----------------------------------------------------------------


@pytest.mark.parametrize("state", PENDING)
@pytest.mark.parametrize("command", sorted(MIGRATE_COMMANDS))
def test_pending_work_on_a_full_disk_is_one_line(
    small_disk: Path, state: str, command: str
) -> None:
    line = line_after_fault(small_disk, state, "full disk", MIGRATE_COMMANDS[command])

    assert "not enough free space" in line and "free space on the disk holding DATA_DIR" in line


@pytest.mark.parametrize("lock_file", ["left by the last upgrade", "missing"])
@pytest.mark.parametrize("command", sorted(MIGRATE_COMMANDS))
def test_a_database_at_head_needs_no_space_to_migrate(
    small_disk: Path, command: str, lock_file: str
) -> None:
    """Also when the lock file must be made, and its holder line cannot be written."""
    environ = prepared(small_disk, "head")
    if lock_file == "missing":
        migration_lock_path(small_disk / DATABASE).unlink()
    fill(small_disk)
    before = contents(small_disk)

    result = run_command(MIGRATE_COMMANDS[command][0], environ)

    assert result.returncode == 0, result.stderr
    assert f"Database is up to date at revision {HEAD}" in result.stderr
    assert_nothing_changed(small_disk, before)


@pytest.mark.parametrize(
    ("state", "args"),
    [
        pytest.param(state, args, id=f"{state}: alembic {' '.join(args)}")
        for state, args in [
            ("head", ["downgrade", "-1"]),
            ("head", ["stamp", BASELINE]),
            ("baseline", ["downgrade", "-1"]),
            ("baseline", ["stamp", "head"]),
        ]
    ],
)
def test_downgrade_and_stamp_on_a_full_disk_are_one_line(
    small_disk: Path, state: str, args: list[str]
) -> None:
    line = line_after_fault(small_disk, state, "full disk", ([*ALEMBIC, *args], ALEMBIC_ERROR))

    assert "not enough free space" in line


def test_without_backups_a_full_disk_is_sqlites_own_line(small_disk: Path) -> None:
    migrate = MIGRATE_COMMANDS["anibridge migrate"]

    line = line_after_fault(small_disk, "baseline", "full disk", migrate, DB_BACKUP_KEEP="0")

    assert "database or disk is full" in line and "free space" in line
    assert "rolled back" in line


@pytest.mark.parametrize("state", sorted(STATES))
def test_restore_on_a_full_disk_is_one_line_and_leaves_no_copy(
    small_disk: Path, state: str
) -> None:
    restore = ([*ANIBRIDGE, "restore", str(RESTORE_SOURCE)], ANIBRIDGE_ERROR)

    line = line_after_fault(small_disk, state, "full disk", restore)

    assert "No space left on device" in line and "free space on the disk holding" in line
    assert "the database was not changed" in line


def test_a_restore_that_runs_out_of_space_midway_leaves_no_copy(small_disk: Path) -> None:
    environ = prepared(small_disk, "head")
    fill(small_disk, leave=RESTORE_SOURCE.stat().st_size // 2)
    before = contents(small_disk)
    assert shutil.disk_usage(small_disk).free > 0

    result = run_command([*ANIBRIDGE, "restore", str(RESTORE_SOURCE)], environ)

    assert "No space left on device" in failure_line(result, ANIBRIDGE_ERROR)
    assert_nothing_changed(small_disk, before)


LATE_FILLER = """#!{python}
import os, shutil, sys
with open({filler!r}, "wb") as filler:
    filler.write(bytes(shutil.disk_usage({folder!r}).free - {leave}))
os.execv({cp!r}, ["cp", *sys.argv[1:]])
"""


def test_a_backup_that_runs_out_of_space_midway_leaves_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    """The disk has room for the backup when it is checked, and fills while `cp` copies."""
    environ = prepared(small_disk, "baseline")
    size = (small_disk / DATABASE).stat().st_size
    fill(small_disk, leave=2 * size)
    before = contents(small_disk)
    late_filler = small_disk / "late-filler"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "cp").write_text(
        LATE_FILLER.format(
            python=sys.executable,
            filler=str(late_filler),
            folder=str(small_disk),
            leave=size // 2,
            cp=shutil.which("cp"),
        )
    )
    (fake_bin / "cp").chmod(0o755)
    environ["PATH"] = f"{fake_bin}{os.pathsep}{environ['PATH']}"

    line = failure_line(run_command([*ANIBRIDGE, "migrate"], environ), ANIBRIDGE_ERROR)

    assert late_filler.stat().st_size > 0, "the disk did not fill during the backup"
    assert "backup of" in line and "No space left on device" in line
    late_filler.unlink()
    assert_nothing_changed(small_disk, before)


WAL_INDEX = f"{DATABASE}-shm"


@pytest.mark.parametrize(
    "command",
    [
        (READING_COMMANDS["anibridge status"], ANIBRIDGE_ERROR),
        (READING_COMMANDS["alembic current"], ALEMBIC_ERROR),
        MIGRATE_COMMANDS["anibridge migrate"],
        (ANIBRIDGE, ANIBRIDGE_ERROR),
    ],
    ids=lambda command: " ".join(command[0][1:]),
)
def test_a_wal_without_its_index_on_a_full_disk_is_named_a_full_disk(
    small_disk: Path, command: tuple[list[str], str]
) -> None:
    """A database copied with its -wal but not its -shm (the WAL's index).

    SQLite must build the index before it can read the -wal, and says only
    "disk I/O error" when the disk has no room for it. It leaves an empty
    index behind, its own and harmless.
    """
    leave_in_write_ahead_log(at_head(small_disk), ["views"])
    environ = command_environment(small_disk)
    fill(small_disk)
    before = contents(small_disk)
    argv, marker = command

    line = failure_line(run_command(argv, environ), marker)

    assert "disk I/O error; the disk holding the database is full: free space" in line
    assert_nothing_changed(small_disk, before, also_made=frozenset({WAL_INDEX}))


# --- the service ------------------------------------------------------------------


def start_service(environ: dict[str, str]) -> tuple[subprocess.Popen, bool]:
    """Start `anibridge` and read its output until it serves or exits."""
    service = subprocess.Popen(
        ANIBRIDGE,
        cwd=REPO_ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    serving = any("Uvicorn running on" in line for line in service.stdout)
    return service, serving


def test_the_service_starts_at_head_on_a_full_disk(small_disk: Path) -> None:
    """With no lock file yet: both are made, and neither can hold a holder line."""
    port = free_port()
    environ = {**prepared(small_disk, "head"), "HOST": "127.0.0.1", "PORT": str(port)}
    migration_lock_path(small_disk / DATABASE).unlink()
    fill(small_disk)
    before = contents(small_disk)

    service, serving = start_service(environ)
    try:
        assert serving
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
            health = json.load(response)
    finally:
        service.terminate()
        service.wait(30)
        service.stdout.close()

    assert health["revision"] == HEAD
    assert_nothing_changed(small_disk, before)


@pytest.mark.parametrize("state", [*PENDING, UNFINISHED_JOBS])
def test_a_start_that_must_write_on_a_full_disk_is_one_line(small_disk: Path, state: str) -> None:
    """Pending revisions need a backup; unfinished jobs are marked failed at every start."""
    line = line_after_fault(small_disk, state, "full disk", (ANIBRIDGE, ANIBRIDGE_ERROR))

    assert "free space" in line


# --- a read-only data folder ------------------------------------------------------


WRITING_COMMANDS = {
    **MIGRATE_COMMANDS,
    "anibridge": (ANIBRIDGE, ANIBRIDGE_ERROR),
    "alembic downgrade -1": ([*ALEMBIC, "downgrade", "-1"], ALEMBIC_ERROR),
    "alembic stamp": ([*ALEMBIC, "stamp", BASELINE], ALEMBIC_ERROR),
    "anibridge restore": ([*ANIBRIDGE, "restore", str(RESTORE_SOURCE)], ANIBRIDGE_ERROR),
}


@pytest.mark.parametrize("state", ["baseline", "head"])
@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
def test_writing_commands_in_a_read_only_folder_are_one_line(
    small_disk: Path, state: str, command: str
) -> None:
    line = line_after_fault(small_disk, state, "read-only folder", WRITING_COMMANDS[command])

    assert "mount it read-write" in line


# --- anibridge plan ---------------------------------------------------------------


@pytest.mark.parametrize("state", PENDING)
def test_plan_without_room_for_its_copy_is_one_line_naming_the_space(
    small_disk: Path, state: str
) -> None:
    line = line_after_fault(small_disk, state, "full disk", ([*ANIBRIDGE, "plan"], ANIBRIDGE_ERROR))

    assert "not enough free space" in line and "for the plan's copy of the database" in line
    assert re.search(r"\(\d+ KiB free, [\d.]+ (KiB|MiB) needed\)", line), line


def test_plan_on_a_read_only_folder_is_one_line(small_disk: Path) -> None:
    line = line_after_fault(
        small_disk, "unversioned", "read-only folder", ([*ANIBRIDGE, "plan"], ANIBRIDGE_ERROR)
    )

    assert "cannot make a scratch folder" in line and "make DATA_DIR writable" in line
