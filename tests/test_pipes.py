"""`anibridge plan | head -1` and kin: a reader that leaves early ends the command quietly.

Before, the report's second write into a closed pipe ended in a
BrokenPipeError traceback (or "Exception ignored" at exit) in about half of
the runs. Each command here reports on a release file, so there is plenty to
write; the reader either leaves before the command writes at all (every
time), or is `head -1` through a real shell pipe, run many times.
"""

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.legacy_data import REPO_ROOT, VENV_BIN, command_environment, release_file

COMMANDS = ["status", "status --json", "plan", "plan --json"]
HEAD_RUNS = 30
AT_ONCE = 3
QUIET_EXITS = (0, 1)
"""0 when the whole report fit in the pipe before the reader left, 1 when it did not."""


@pytest.fixture(scope="module")
def environ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("pipes")
    shutil.copyfile(release_file("v2.1.0.db"), data_dir / "anibridge_jobs.db")
    return command_environment(data_dir)


def anibridge(command: str) -> list[str]:
    return [str(VENV_BIN / "anibridge"), *command.split()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_reader_gone_before_the_report_ends_it_with_exit_1_and_nothing_said(
    command: str, environ: dict[str, str]
) -> None:
    process = subprocess.Popen(
        anibridge(command),
        cwd=REPO_ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()

    _, stderr = process.communicate(timeout=60)

    assert (process.returncode, stderr) == (1, "")


def through_head(command: str, environ: dict[str, str]) -> tuple[int, str, str]:
    """`command | head -1` in bash: the command's exit status, head's output, all stderr."""
    shell = f"{' '.join(anibridge(command))} | head -1; exit ${{PIPESTATUS[0]}}"
    result = subprocess.run(
        ["bash", "-c", shell], cwd=REPO_ROOT, env=environ, capture_output=True, text=True
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.timeout(240)
def test_status_json_through_head_is_quiet_every_time(environ: dict[str, str]) -> None:
    with ThreadPoolExecutor(AT_ONCE) as pool:
        runs = list(pool.map(lambda _: through_head("status --json", environ), range(HEAD_RUNS)))

    noisy = [run for run in runs if run[0] not in QUIET_EXITS or run[2] or run[1] != "{\n"]
    assert not noisy, f"{len(noisy)} of {HEAD_RUNS} runs were not quiet; first: {noisy[0]}"
