"""What every benchmark shares: timed child processes, medians, ratios and the machine."""

import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from app.config import SETTING_NAMES
from tests import faults

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
PYTHON = sys.executable
ALEMBIC = str(Path(sys.executable).with_name("alembic"))
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Sample:
    seconds: float
    max_rss_mib: float = 0.0


@dataclass
class Figure:
    """One measured line: the median of its samples, and what it is compared with."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    unit_count: int = 0

    @property
    def seconds(self) -> float:
        return statistics.median(sample.seconds for sample in self.samples)

    @property
    def max_rss_mib(self) -> float:
        return statistics.median(sample.max_rss_mib for sample in self.samples)

    @property
    def per_second(self) -> float:
        return self.unit_count / self.seconds


@dataclass
class Verdict:
    benchmark: str
    target: str
    met: bool
    detail: str


def child_env(**settings: str) -> dict[str, str]:
    """The process environment without any app setting, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if key not in SETTING_NAMES}
    env.update(settings)
    return env


def run_timed(
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path = PROJECT_ROOT,
    check: bool = True,
    expect: int = 0,
) -> Sample:
    """Run a child process to its end; its wall time and its own peak memory.

    With `check`, an exit status other than `expect` is an error.
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    errors = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    if check and process.returncode != expect:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {errors[-2000:]}")
    return Sample(elapsed, usage.ru_maxrss / 1024)


def time_call(action: Callable[[], object]) -> Sample:
    started = time.perf_counter()
    action()
    return Sample(time.perf_counter() - started)


def measure_interleaved(
    runs: int,
    trials: Mapping[str, Callable[[], Sample]],
    prepare: Callable[[], object] | None = None,
) -> dict[str, Figure]:
    """Run each trial `runs` times, taking turns, so noise falls on all of them alike."""
    figures = {name: Figure(name) for name in trials}
    for _ in range(runs):
        for name, trial in trials.items():
            if prepare is not None:
                prepare()
            figures[name].samples.append(trial())
    return figures


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"anibridge-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def scratch_postgres_database() -> Iterator[URL]:
    """A database created on BENCH_POSTGRES_URL's server (default: the local one), then dropped."""
    server = make_url(os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with faults.scratch_postgres_database(admin, server) as url:
            yield url
    finally:
        admin.dispose()


def python_code(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def ratio(figure: Figure, floor: Figure) -> float:
    return figure.seconds / floor.seconds


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A connection for building benchmark data fast (no journal, no fsync)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    return connection


def figure_line(figure: Figure, floor: Figure | None = None, unit: str = "") -> str:
    parts = [f"  {figure.name:<44} {figure.seconds:9.3f} s"]
    parts.append(f"{ratio(figure, floor):6.2f}x floor" if floor else " " * 12)
    if figure.unit_count:
        parts.append(f"{figure.per_second:12,.0f} {unit}/s")
    if figure.max_rss_mib:
        parts.append(f"max RSS {figure.max_rss_mib:6.1f} MiB")
    return "  ".join(parts)


@dataclass
class Report:
    """What one benchmark prints: its figures, then whether each target was met."""

    title: str
    lines: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def add(self, figure: Figure, floor: Figure | None = None, unit: str = "") -> None:
        self.lines.append(figure_line(figure, floor, unit))

    def check(self, target: str, met: bool, detail: str) -> None:
        self.verdicts.append(Verdict(self.title, target, met, detail))

    def render(self) -> str:
        verdicts = [
            f"  {'MET ' if v.met else 'MISS'} {v.target}: {v.detail}" for v in self.verdicts
        ]
        return "\n".join([self.title, *self.lines, *verdicts])


def check_rate_and_memory(
    report: Report,
    sizes: tuple[int, int],
    small: Figure,
    big: Figure,
    big_floor: Figure,
    floor_name: str,
    targets: tuple[float, float],
) -> None:
    """The two targets a row-copying benchmark shares: rows/s against its floor, flat memory."""
    (small_rows, big_rows), (target_speed, target_memory_mib) = sizes, targets
    speed = big.per_second / big_floor.per_second
    growth = big.max_rss_mib - small.max_rss_mib
    report.check(
        f"rows/s >= {target_speed}x {floor_name} at {big_rows:,} rows",
        speed >= target_speed,
        f"{speed:.2f}x",
    )
    report.check(
        f"peak memory flat within {target_memory_mib:.0f} MiB from {small_rows:,} to {big_rows:,}",
        abs(growth) <= target_memory_mib,
        f"{small.max_rss_mib:.1f} -> {big.max_rss_mib:.1f} MiB ({growth:+.1f} MiB)",
    )


def machine_description() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"nproc: {len(os.sched_getaffinity(0))}",
        f"CPU: {model}",
        f"Python: {platform.python_version()}",
        f"SQLite: {sqlite3.sqlite_version}",
        f"load average at start: {' '.join(f'{load:.2f}' for load in os.getloadavg())}",
    ]
