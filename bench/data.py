"""Benchmark data: rows of the app's tables, inserted with sqlite3, and project copies."""

import json
import shutil
import sqlite3
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from bench.common import PROJECT_ROOT, PYTHON, child_env, run_timed, sqlite_connect

BATCH = 10_000
STATUSES = ("queued", "downloading", "completed", "failed", "cancelled")
LANGUAGES = ("German Dub", "German Sub", "English Sub", "English Dub")
JOB_COLUMNS = (
    "id, status, progress, downloaded_bytes, total_bytes, speed, eta, message, "
    "result_path, source_site, created_at, updated_at"
)
SINGLE_SITE_AVAILABILITY_COLUMNS = (
    "slug, season, episode, language, available, height, vcodec, provider, checked_at, extra"
)


def timestamp(number: int) -> str:
    return f"2025-{number % 12 + 1:02d}-{number % 28 + 1:02d} {number % 24:02d}:00:00.000000"


def job_rows(count: int, message_size: int = 40) -> Iterator[tuple]:
    filler = "x" * message_size
    for number in range(count):
        yield (
            f"{number:032x}",
            STATUSES[number % len(STATUSES)],
            float(number % 101),
            number * 1024,
            number * 2048,
            1.5e6,
            number % 3600,
            f"{number} {filler}",
            f"/downloads/show-{number // 100}/episode-{number % 100}.mkv",
            "aniworld.to",
            timestamp(number),
            timestamp(number + 1),
        )


def single_site_availability_rows(count: int) -> Iterator[tuple]:
    extra = json.dumps({"probe": "bench", "ms": 120})
    for number in range(count):
        episode, rest = number % 24, number // 24
        language, rest = LANGUAGES[rest % len(LANGUAGES)], rest // len(LANGUAGES)
        yield (
            f"show-{rest // 10}",
            rest % 10 + 1,
            episode + 1,
            language,
            number % 2,
            1080,
            "h264",
            "VOE",
            timestamp(number),
            extra,
        )


def insert_rows(path: Path, table: str, columns: str, rows: Iterator[tuple]) -> None:
    """Insert `rows` in one transaction, fast (builder only: no journal, no fsync)."""
    placeholders = ", ".join("?" for _ in columns.split(","))
    connection = sqlite_connect(path)
    try:
        connection.execute("BEGIN")
        while batch := list(islice(rows, BATCH)):
            connection.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", batch
            )
        connection.execute("COMMIT")
    finally:
        connection.close()


def migrate_to_head(data_dir: Path, project: Path = PROJECT_ROOT) -> Path:
    run_timed([PYTHON, "-m", "app.migrate"], child_env(DATA_DIR=str(data_dir)), cwd=project)
    return data_dir / "anibridge_jobs.db"


def fresh_copy(template: Path, data_dir: Path) -> Path:
    """Put a copy of `template` in place as DATA_DIR's database, with nothing beside it."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    database = data_dir / "anibridge_jobs.db"
    shutil.copyfile(template, database)
    return database


def row_count(database: Path, table: str) -> int:
    connection = sqlite3.connect(database)
    try:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()
