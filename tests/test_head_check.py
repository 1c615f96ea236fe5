"""The start-up fast check trusts the manifest's head, and nothing it cannot confirm.

`app.migration.at_head` says "at head" only when `migrations/manifest.txt` lists
exactly the revision files on disk (names and checksums) and the database is
stamped with its head; anything else falls through to `alembic upgrade head`.
These tests hold it to that: its head is Alembic's, a stale, missing or extra
revision file or a manifest that does not match gives no answer, "at head"
means the full upgrade finds nothing to do, its SQLite path never imports
SQLAlchemy, and the service's in-process use works on PostgreSQL.
"""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from app.config import DATABASE_FILE_NAME, ConfigError, ensure_data_dir, load_settings
from app.main import prepare_database
from app.migration.at_head import (
    at_vouched_head,
    database_at_head,
    settings_acceptable,
    sqlite_database_path,
    vouched_head,
)
from app.migration.errors import MigrationLockTimeoutError
from app.migration.guarded_run import database_revision, upgrade_database
from app.migration.locking import POSTGRES_LOCK_KEY
from app.migration.manifest import MIGRATIONS_DIR, manifest_path
from app.migration.revisions import script_directory
from tests.chain import BASELINE, HEAD, InjectedRevision, plant_revisions
from tests.conftest import REPO_ROOT, settings_for


@pytest.fixture(scope="module")
def database_at_project_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("head") / "data"
    settings = load_settings({"DATA_DIR": str(data_dir)})
    ensure_data_dir(settings)
    upgrade_database(settings)
    return data_dir / DATABASE_FILE_NAME


@pytest.fixture
def data_dir(tmp_path: Path, database_at_project_head: Path) -> Path:
    """A DATA_DIR holding a copy of a database at head, with its lock file."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in (DATABASE_FILE_NAME, f"{DATABASE_FILE_NAME}.migration-lock"):
        shutil.copyfile(database_at_project_head.parent / name, folder / name)
    return folder


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A copy of migrations/ (manifest and revision files) to change."""
    ignore = shutil.ignore_patterns("__pycache__")
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations", ignore=ignore))


def revision_file(migrations: Path, revision: str) -> Path:
    (path,) = (migrations / "versions").glob(f"*-{revision}_*.py")
    return path


def execute(database: Path, *statements: str) -> None:
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifests_head_is_alembics_single_head() -> None:
    assert vouched_head() == HEAD
    assert Path(script_directory().versions) == MIGRATIONS_DIR / "versions"


def test_alembic_ini_keeps_the_layout_the_check_reads() -> None:
    """Other version locations or sourceless files would be revisions the check never sees."""
    ini = (REPO_ROOT / "alembic.ini").read_text()
    for option in ("version_locations", "recursive_version_locations", "sourceless"):
        assert option not in ini


def add_revision_after_head(migrations: Path) -> None:
    plant_revisions(migrations.parent, [InjectedRevision("ffff00000001", "Next", "    pass")])


def remove_a_listed_file(migrations: Path) -> None:
    revision_file(migrations, HEAD).unlink()


def edit_a_listed_file(migrations: Path) -> None:
    with revision_file(migrations, BASELINE).open("a") as handle:
        handle.write("\n# edited after the manifest was written\n")


def rename_a_listed_file(migrations: Path) -> None:
    path = revision_file(migrations, BASELINE)
    path.rename(path.with_name(f"renamed-{path.name}"))


def remove_the_manifest(migrations: Path) -> None:
    manifest_path(migrations).unlink()


def rewrite_manifest(old: str, new: str):
    def rewrite(migrations: Path) -> None:
        path = manifest_path(migrations)
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))

    return rewrite


STALE = {
    "revision file added after head": add_revision_after_head,
    "listed file removed": remove_a_listed_file,
    "listed file edited": edit_a_listed_file,
    "listed file renamed": rename_a_listed_file,
    "no manifest": remove_the_manifest,
    "manifest names another head": rewrite_manifest(f"head {HEAD}", f"head {BASELINE}0"),
    "manifest without a head": rewrite_manifest(f"head {HEAD}\n", ""),
    "manifest line it cannot read": rewrite_manifest("\nhead ", "\nbogus line\nhead "),
    "manifest lists a file that is not there": rewrite_manifest(
        "\nhead ", "\ndraft ffff00000009 " + "0" * 64 + " 2099_01_01_0000-ffff00000009_x.py\nhead "
    ),
    "manifest not UTF-8": lambda migrations: manifest_path(migrations).write_bytes(b"\xff\xfe"),
}


@pytest.mark.parametrize("change", STALE.values(), ids=STALE.keys())
def test_a_manifest_that_does_not_match_the_files_gives_no_answer(
    data_dir: Path, migrations: Path, change
) -> None:
    env = {"DATA_DIR": str(data_dir)}
    assert database_at_head(env, migrations) == HEAD
    change(migrations)
    assert vouched_head(migrations) is None
    assert database_at_head(env, migrations) is None
    assert not at_vouched_head([HEAD], migrations)


def test_files_alembic_skips_are_skipped(data_dir: Path, migrations: Path) -> None:
    versions = migrations / "versions"
    (versions / "__init__.py").write_text("x = (\n")
    (versions / ".#b.py").write_text("x = (\n")
    (versions / "notes.txt").write_text("revision = 1\n")
    (versions / "__pycache__").mkdir()
    (versions / "folder.py").mkdir()
    assert database_at_head({"DATA_DIR": str(data_dir)}, migrations) == HEAD


def test_at_head_means_the_full_upgrade_finds_nothing_to_do(data_dir: Path) -> None:
    database = data_dir / DATABASE_FILE_NAME
    before = digest(database)
    assert database_at_head({"DATA_DIR": str(data_dir)}) == HEAD

    upgrade_database(load_settings({"DATA_DIR": str(data_dir)}))

    assert digest(database) == before
    assert not (data_dir / "backups").exists()


def test_not_at_head_means_the_full_upgrade_has_work(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path)})
    upgrade_database(settings, BASELINE)
    database = tmp_path / DATABASE_FILE_NAME
    before = digest(database)
    assert database_at_head({"DATA_DIR": str(tmp_path)}) is None

    upgrade_database(settings)

    assert digest(database) != before
    assert database_at_head({"DATA_DIR": str(tmp_path)}) == HEAD


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE alembic_version SET version_num = '{BASELINE}'",
        "UPDATE alembic_version SET version_num = 'fedcba987654'",
        "DELETE FROM alembic_version",
        "DROP TABLE alembic_version",
        f"INSERT INTO alembic_version VALUES ('{BASELINE}')",
    ],
    ids=["pending", "newer than the code", "empty", "unversioned", "two rows"],
)
def test_any_other_stamp_is_not_at_head(data_dir: Path, statement: str) -> None:
    execute(data_dir / DATABASE_FILE_NAME, statement)
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None


def test_dangling_foreign_keys_are_left_to_the_full_path(data_dir: Path) -> None:
    """The full path refuses to commit with broken references, even with nothing pending."""
    execute(
        data_dir / DATABASE_FILE_NAME,
        "CREATE TABLE child (id INTEGER PRIMARY KEY, job_id VARCHAR REFERENCES job (id))",
        "INSERT INTO child VALUES (1, 'no such job')",
    )
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None


def test_a_running_upgrade_is_waited_for_by_the_full_path(data_dir: Path) -> None:
    import fcntl

    lock = os.open(data_dir / f"{DATABASE_FILE_NAME}.migration-lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    finally:
        os.close(lock)
    assert database_at_head({"DATA_DIR": str(data_dir)}) == HEAD


def test_missing_lock_file_or_database_is_left_to_the_full_path(data_dir: Path) -> None:
    (data_dir / f"{DATABASE_FILE_NAME}.migration-lock").unlink()
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    (data_dir / DATABASE_FILE_NAME).unlink()
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    assert sorted(os.listdir(data_dir)) == []


def test_the_check_writes_nothing(data_dir: Path) -> None:
    before = {path.name: path.read_bytes() for path in data_dir.iterdir()}
    assert database_at_head({"DATA_DIR": str(data_dir)}) == HEAD
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == before


def test_non_sqlite_file_is_left_to_the_full_path(data_dir: Path) -> None:
    (data_dir / DATABASE_FILE_NAME).write_bytes(b"not a database at all")
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None


SETTING_SAMPLES = {
    "DB_MIGRATE_ON_STARTUP": ["true", " Yes ", "0", "off", "", "maybe", "2"],
    "DB_BACKUP_KEEP": ["0", "1000", " 7 ", "1001", "-1", "", "1_0", "five", "1.5", "\u0663"],
    "DB_MIGRATION_LOCK_TIMEOUT": ["1", "86400", "0", "86401", "60s"],
    "DB_CONNECT_RETRIES": ["0", "10", "1000", "1001", "+3"],
    "PORT": ["1", "8000", "65535", "0", "65536", "http"],
    "LOG_LEVEL": ["info", "DEBUG", " warning ", "critical", "error", "trace", "", "warn"],
    "HOST": ["0.0.0.0", "", "::"],
}


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in SETTING_SAMPLES.items() for value in values],
)
def test_settings_accepted_exactly_when_app_config_accepts_them(
    tmp_path: Path, name: str, value: str
) -> None:
    env = {"DATA_DIR": str(tmp_path), name: value}
    try:
        load_settings(env)
        config_accepts = True
    except ConfigError:
        config_accepts = False
    assert settings_acceptable(env) == config_accepts


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///relative/db.sqlite",
        "sqlite:////absolute/path/anibridge_jobs.db",
        "sqlite+pysqlite:///x.db",
        "  sqlite:///spaced.db  ",
        "sqlite:///a b/c.db",
        "sqlite:///x.db?mode=ro",
        "sqlite:///a%20b.db",
        "sqlite:///:memory:",
        "sqlite://",
        "SQLITE:///x.db",
        "postgresql://user:secret@db:5432/anibridge",
        "not a url",
    ],
)
def test_database_path_is_the_one_app_config_uses(tmp_path: Path, url: str) -> None:
    env = {"DATA_DIR": str(tmp_path), "DATABASE_URL": url}
    path = sqlite_database_path(env)
    if path is not None:
        assert str(path) == load_settings(env).database_url.database


def test_default_database_path(tmp_path: Path) -> None:
    assert sqlite_database_path({}) == Path("data") / DATABASE_FILE_NAME
    expected = Path(load_settings({"DATA_DIR": str(tmp_path)}).database_url.database)
    assert sqlite_database_path({"DATA_DIR": str(tmp_path)}) == expected
    assert sqlite_database_path({"DATA_DIR": str(tmp_path), "DATABASE_URL": "  "}) == expected


def test_the_separate_check_leaves_postgres_to_the_full_path(data_dir: Path) -> None:
    env = {"DATA_DIR": str(data_dir), "DATABASE_URL": "postgresql://postgres@localhost/test"}
    assert database_at_head(env) is None


def hold_the_upgrade_lock(url: URL) -> sa.Connection:
    """A session holding the PostgreSQL upgrade lock, as a running upgrade does."""
    connection = sa.create_engine(url, poolclass=sa.pool.NullPool).connect()
    connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    return connection


@pytest.mark.postgres
def test_on_postgresql_the_service_checks_in_process_and_upgrades_only_when_needed(
    postgres_url: URL, tmp_path: Path
) -> None:
    """At head the service serves without taking the upgrade lock; otherwise it upgrades.

    The lock is held elsewhere with a 1 s timeout: only a run that upgrades waits for it.
    """
    settings = settings_for(postgres_url, tmp_path / "data", DB_MIGRATION_LOCK_TIMEOUT="1")
    upgrade_database(settings)
    assert at_vouched_head(database_revision(settings))
    holder = hold_the_upgrade_lock(postgres_url)
    try:
        assert prepare_database(settings) == HEAD
        with sa.create_engine(postgres_url, poolclass=sa.pool.NullPool).begin() as connection:
            connection.execute(sa.text(f"UPDATE alembic_version SET version_num = '{BASELINE}'"))
        assert not at_vouched_head(database_revision(settings))
        with pytest.raises(MigrationLockTimeoutError):
            prepare_database(settings)
    finally:
        holder.close()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items() if key not in SETTING_SAMPLES}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )


def test_command_prints_the_head_only_when_at_head(data_dir: Path) -> None:
    code = (
        "import sys\n"
        "from app.migration.at_head import main\n"
        "print(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))\n"
    )
    at_head = run_python(code, DATA_DIR=str(data_dir))
    assert at_head.stdout.splitlines() == [HEAD, "0", "[]"]
    assert at_head.stderr == ""
    execute(data_dir / DATABASE_FILE_NAME, "DELETE FROM alembic_version")
    pending = run_python(code, DATA_DIR=str(data_dir))
    assert pending.stdout.splitlines() == ["1", "[]"]


def test_head_check_imports_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import app.migration.at_head\n"
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}"
        " - set(sys.stdlib_module_names)))\n"
    )
    assert run_python(code).stdout.strip() == "['app']"
