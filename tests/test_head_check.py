"""The start-up fast check gives Alembic's answer, or none at all.

`app.migration.at_head` reads revision files with `ast` and the database read-only.
These tests hold it to three promises: its heads are `ScriptDirectory.get_heads()`
for every history shape it accepts; it says "at head" only when the full
upgrade would find nothing to do (never from a stale view); and it stays on the
standard library, so `python -m app.migration.at_head` never imports SQLAlchemy.
"""

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from app.config import DATABASE_FILE_NAME, ConfigError, ensure_data_dir, load_settings
from app.migration.at_head import (
    VERSIONS_DIR,
    database_at_head,
    revision_heads,
    settings_acceptable,
    sqlite_database_path,
)
from app.migration.guarded_run import upgrade_database
from app.migration.revisions import script_directory
from tests.conftest import REPO_ROOT

HEADER = "from collections.abc import Sequence\n\n"


def write_revisions(root: Path, revisions: dict[str, str]) -> Path:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    for name, body in revisions.items():
        (versions / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    return versions


def alembic_heads(versions: Path) -> set[str]:
    return set(ScriptDirectory(str(versions.parent)).get_heads())


def rev(revision: str, down: str = "None", extra: str = "") -> str:
    return f'revision = "{revision}"\ndown_revision = {down}\n{extra}\n'


HISTORIES = {
    "linear": {"a": rev("a"), "b": rev("b", '"a"'), "c": rev("c", '"b"')},
    "two branches": {"a": rev("a"), "b": rev("b", '"a"'), "c": rev("c", '"a"')},
    "merge": {
        "a": rev("a"),
        "b": rev("b", '"a"'),
        "c": rev("c", '"a"'),
        "d": rev("d", '("b", "c")'),
    },
    "depends_on across branches": {
        "a": rev("a"),
        "b": rev("b", '"a"'),
        "c": rev("c", '"a"', 'branch_labels = ("other",)'),
        "d": rev("d", '"b"', 'depends_on = "c"'),
    },
    "branch labels": {
        "a": rev("a", extra='branch_labels: str | Sequence[str] | None = ("main", "core")'),
        "b": rev("b", '"a"', 'branch_labels = "feature"'),
    },
    "annotated, multi-line, list and one-element tuple": {
        "a": rev("a"),
        "b": 'revision: str = "b"\ndown_revision: str | Sequence[str] | None = ("a",)\n',
        "c": 'revision: str = "c"\ndown_revision: str | Sequence[str] | None = ["a"]\n',
        "d": textwrap.dedent(
            """\
            revision: str = 'd'
            down_revision: str | Sequence[str] | None = (
                "b",  # first parent
                "c",
            )
            branch_labels: str | Sequence[str] | None = None
            depends_on: str | Sequence[str] | None = None


            def upgrade() -> None:
                '''revision and down_revision are only mentioned in strings here.'''
                print("revision")
            """
        ),
    },
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=HISTORIES.keys())
def test_heads_match_alembic(tmp_path: Path, history: dict[str, str]) -> None:
    versions = write_revisions(tmp_path, history)
    assert revision_heads(versions) == alembic_heads(versions)


def test_heads_of_the_project_match_alembic() -> None:
    assert revision_heads(VERSIONS_DIR) == set(script_directory().get_heads())
    assert Path(script_directory().versions) == VERSIONS_DIR


def test_alembic_ini_keeps_the_layout_the_check_reads() -> None:
    """Other version locations or sourceless files would be revisions the check never sees."""
    ini = (REPO_ROOT / "alembic.ini").read_text()
    for option in ("version_locations", "recursive_version_locations", "sourceless"):
        assert option not in ini


UNSURE = {
    "non-literal down_revision": {"a": rev("a"), "b": 'PARENT = "a"\n' + rev("b", "PARENT")},
    "revision bound twice": {"a": rev("a") + 'revision = "z"\n'},
    "revision rebound in a function": {
        "a": rev("a") + "def f():\n    global revision\n    revision = 'z'\nf()\n"
    },
    "globals() write": {"a": rev("a") + 'globals()["revision"] = "z"\n'},
    "star import": {"a": rev("a") + "from os.path import *\n"},
    "revision imported": {"a": "from somewhere import revision\ndown_revision = None\n"},
    "revision in an if": {"a": 'if True:\n    revision = "a"\ndown_revision = None\n'},
    "missing down_revision": {"a": 'revision = "a"\n'},
    "syntax error": {"a": rev("a"), "b": rev("b", '"a"') + "def (:\n"},
    "unknown parent": {"a": rev("a"), "b": rev("b", '"zzz"')},
    "parent given by branch label": {
        "a": rev("a", extra='branch_labels = "main"'),
        "b": rev("b", '"main"'),
    },
    "duplicate revision id": {"a": rev("a"), "a2": rev("a")},
    "dependency cycle": {
        "a": rev("a", extra='depends_on = "b"'),
        "b": rev("b", '"a"'),
    },
    "label clashes with a revision": {"a": rev("a"), "b": rev("b", '"a"', 'branch_labels = "a"')},
}


@pytest.mark.parametrize("history", UNSURE.values(), ids=UNSURE.keys())
def test_unsure_histories_give_no_answer(tmp_path: Path, history: dict[str, str]) -> None:
    assert revision_heads(write_revisions(tmp_path, history)) is None


def test_files_alembic_skips_are_skipped(tmp_path: Path) -> None:
    versions = write_revisions(tmp_path, {"a": rev("a"), "b": rev("b", '"a"')})
    (versions / "__init__.py").write_text("x = (\n")
    (versions / ".#b.py").write_text("x = (\n")
    (versions / "notes.txt").write_text("revision = 1\n")
    (versions / "__pycache__").mkdir()
    assert revision_heads(versions) == alembic_heads(versions) == {"b"}


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
def versions(tmp_path: Path) -> Path:
    return Path(shutil.copytree(VERSIONS_DIR, tmp_path / "versions"))


def project_head() -> str:
    (head,) = script_directory().get_heads()
    return head


def execute(database: Path, *statements: str) -> None:
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()


def test_database_at_head_is_recognised(data_dir: Path) -> None:
    assert database_at_head({"DATA_DIR": str(data_dir)}) == project_head()


def test_a_new_revision_is_seen_at_once(data_dir: Path, versions: Path) -> None:
    env = {"DATA_DIR": str(data_dir)}
    assert database_at_head(env, versions) == project_head()
    (versions / "2099_01_01_0000-ffff00000001_next.py").write_text(
        rev("ffff00000001", f'"{project_head()}"')
    )
    assert database_at_head(env, versions) is None


def test_two_heads_are_left_to_the_full_path(data_dir: Path, versions: Path) -> None:
    """`upgrade head` refuses several heads; the check must not call that "up to date"."""
    for name in ("ffff00000002", "ffff00000003"):
        (versions / f"{name}.py").write_text(rev(name, f'"{project_head()}"'))
    execute(
        data_dir / DATABASE_FILE_NAME,
        "UPDATE alembic_version SET version_num = 'ffff00000002'",
        "INSERT INTO alembic_version VALUES ('ffff00000003')",
    )
    assert database_at_head({"DATA_DIR": str(data_dir)}, versions) is None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE alembic_version SET version_num = '5cb5dab892ec'",
        "UPDATE alembic_version SET version_num = 'fedcba987654'",
        "DELETE FROM alembic_version",
        "DROP TABLE alembic_version",
        "INSERT INTO alembic_version VALUES ('5cb5dab892ec')",
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
    lock = os.open(data_dir / f"{DATABASE_FILE_NAME}.migration-lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    finally:
        os.close(lock)
    assert database_at_head({"DATA_DIR": str(data_dir)}) == project_head()


def test_missing_lock_file_or_database_is_left_to_the_full_path(data_dir: Path) -> None:
    (data_dir / f"{DATABASE_FILE_NAME}.migration-lock").unlink()
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    (data_dir / DATABASE_FILE_NAME).unlink()
    assert database_at_head({"DATA_DIR": str(data_dir)}) is None
    assert sorted(os.listdir(data_dir)) == []


def test_the_check_writes_nothing(data_dir: Path) -> None:
    before = {path.name: path.read_bytes() for path in data_dir.iterdir()}
    assert database_at_head({"DATA_DIR": str(data_dir)}) == project_head()
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


def test_postgres_is_left_to_the_full_path(data_dir: Path) -> None:
    env = {"DATA_DIR": str(data_dir), "DATABASE_URL": "postgresql://postgres@localhost/test"}
    assert database_at_head(env) is None


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
    assert at_head.stdout.splitlines() == [project_head(), "0", "[]"]
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
