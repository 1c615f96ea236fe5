"""`anibridge status` and `plan` refuse what the upgrade refuses before it writes, in its words.

Each case prepares a release file the upgrade would adopt if it could write,
then makes it unwritable one way: an immutable file (`chattr +i`, as root), a
read-only file, a read-only data folder, and an upgrade lock file left by
another user (those three run without root's powers, so uid 0 is bound by
permission bits). The upgrade (`anibridge migrate`, `alembic upgrade head`,
the service) refuses in one line; status says `refused` and plan says
`refused` (exit 1) with exactly that line's reason, and nothing changes.
"""

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.migration.sqlite_files import migration_lock_path
from tests.legacy_data import VENV_BIN, command_environment, release_file, run_command, sha256_of
from tests.test_bad_paths import tree
from tests.test_full_disk import unavailable

DATABASE = "anibridge_jobs.db"
STRANGER = 4242
UPGRADES = {
    "anibridge migrate": ([str(VENV_BIN / "anibridge"), "migrate"], "anibridge: error: "),
    "anibridge (serve)": ([str(VENV_BIN / "anibridge")], "anibridge: error: "),
    "alembic upgrade head": ([str(VENV_BIN / "alembic"), "upgrade", "head"], "FAILED: "),
}


def immutable_file(database: Path) -> None:
    if os.geteuid() != 0:
        unavailable("chattr +i needs root")
    made = subprocess.run(["chattr", "+i", str(database)], capture_output=True, text=True)
    if made.returncode != 0:
        unavailable(f"chattr +i is not supported here: {made.stderr.strip()}")


def read_only_file(database: Path) -> None:
    database.chmod(0o444)


def read_only_folder(database: Path) -> None:
    database.parent.chmod(0o555)


def another_users_lock_file(database: Path) -> None:
    if os.geteuid() != 0:
        unavailable("giving a lock file to another user needs root")
    lock = migration_lock_path(database)
    lock.touch(mode=0o600)
    os.chown(lock, STRANGER, STRANGER)


CASES: dict[str, tuple[Callable[[Path], None], bool]] = {
    "immutable file": (immutable_file, False),
    "read-only file": (read_only_file, True),
    "read-only folder": (read_only_folder, True),
    "another user's lock file": (another_users_lock_file, True),
}


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    """A release file in its own DATA_DIR; its immutable flag is cleared at the end."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / DATABASE
    shutil.copyfile(release_file("v2.1.0.db"), path)
    yield path
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    data_dir.chmod(0o755)


def reason_of(result: subprocess.CompletedProcess, marker: str) -> str:
    """The one line a refusing command prints, without its marker."""
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.startswith(marker)]
    assert result.returncode != 0 and "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0].removeprefix(marker)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
def test_status_and_plan_give_the_upgrade_s_own_refusal(case: str, database: Path) -> None:
    make_unwritable, without_root_powers = CASES[case]
    make_unwritable(database)
    environ = command_environment(database.parent)
    before, checksum = tree(database.parent), sha256_of(database)

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return run_command(argv, environ, without_root_powers=without_root_powers)

    refusals = {name: reason_of(run(argv), marker) for name, (argv, marker) in UPGRADES.items()}
    status = run([str(VENV_BIN / "anibridge"), "status", "--json"])
    plan = run([str(VENV_BIN / "anibridge"), "plan", "--json"])

    (refusal,) = set(refusals.values())
    report = json.loads(status.stdout)
    assert (report["state"], report["message"]) == ("refused", refusal), status.stdout
    planned = json.loads(plan.stdout)
    assert (plan.returncode, planned["outcome"], planned["refusal"]) == (1, "refused", refusal)
    assert tree(database.parent) == before and sha256_of(database) == checksum
