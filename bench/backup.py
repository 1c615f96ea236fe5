"""4. Backup before an upgrade: `backup_database` on a large database, against copying the file.

The floor is a durable copy (copy, then fsync): a backup is only worth taking
if it is on disk before the upgrade starts, and `backup_database` fsyncs. A
plain copy that stops at the page cache is shown beside it.

The database (job rows with long messages) is built once and kept in
bench/results/ (gitignored). Both sides read it from a warm page cache and run
in this process, taking turns; each output file is deleted after its run.
"""

import os
import shutil
from pathlib import Path

from app.migration.backup import backup_database
from bench.common import RESULTS_DIR, Report, Sample, measure_interleaved, scratch_dir, time_call
from bench.data import JOB_COLUMNS, insert_rows, job_rows, migrate_to_head

FULL_SIZE_MIB = 1024
QUICK_SIZE_MIB = 100
MESSAGE_SIZE = 600
ROWS_PER_MIB = 1_200
TARGET_SPEED = 0.7


def cached_database(size_mib: int) -> Path:
    """A database of about `size_mib` MiB at head, built on first use."""
    database = RESULTS_DIR / f"backup-{size_mib}MiB" / "anibridge_jobs.db"
    if database.exists():
        return database
    shutil.rmtree(database.parent, ignore_errors=True)
    building = RESULTS_DIR / f"backup-{size_mib}MiB.building"
    shutil.rmtree(building, ignore_errors=True)
    built = migrate_to_head(building)
    insert_rows(built, "job", JOB_COLUMNS, job_rows(size_mib * ROWS_PER_MIB, MESSAGE_SIZE))
    os.replace(building, database.parent)
    return database


def copy_file(database: Path, target: Path) -> Sample:
    sample = time_call(lambda: shutil.copyfile(database, target))
    target.unlink()
    return sample


def copy_file_synced(database: Path, target: Path) -> Sample:
    def copy_and_sync() -> None:
        shutil.copyfile(database, target)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    sample = time_call(copy_and_sync)
    target.unlink()
    return sample


def backup(database: Path, backups_dir: Path) -> Sample:
    sample = time_call(lambda: backup_database(database, backups_dir, "bench"))
    shutil.rmtree(backups_dir)
    return sample


def run(quick: bool, runs: int) -> Report:
    report = Report("4. Backup before an upgrade (app.migration.backup.backup_database)")
    database = cached_database(QUICK_SIZE_MIB if quick else FULL_SIZE_MIB)
    size_mb = database.stat().st_size / 1e6
    with scratch_dir("backup") as scratch:
        copy_file(database, scratch / "warm-up")
        figures = measure_interleaved(
            runs,
            {
                "floor: shutil.copyfile + fsync": lambda: copy_file_synced(
                    database, scratch / "copy"
                ),
                "shutil.copyfile, no fsync": lambda: copy_file(database, scratch / "copy"),
                "backup_database": lambda: backup(database, scratch / "backups"),
            },
        )
    floor, unsynced, backup_figure = figures.values()
    report.lines.append(f"  database: {size_mb:,.0f} MB")
    for figure in figures.values():
        figure.unit_count = round(size_mb)
        report.add(figure, floor, "MB")
    speed = backup_figure.per_second / floor.per_second
    report.lines.append(
        "  against the copy left in the page cache (not yet on disk): "
        f"{backup_figure.per_second / unsynced.per_second:.2f}x"
    )
    report.check(
        f"throughput >= {TARGET_SPEED}x a durable copy", speed >= TARGET_SPEED, f"{speed:.2f}x"
    )
    return report
