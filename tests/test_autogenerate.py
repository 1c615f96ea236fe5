"""`alembic revision --autogenerate` as a developer runs it, on SQLite and PostgreSQL.

Each test copies the project into a temporary directory and runs the alembic
CLI there in a subprocess, with PYTHONPATH pointing at the copy, so editing the
copy's models and writing revisions never touches the repository.
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from app.migration.authoring.manifest import manifest_path, read_manifest
from app.migration.authoring.manifest import problems as manifest_problems
from app.migration.revisions import PROJECT_ROOT
from tests.chain import HEAD, copy_project
from tests.row_dump import RowDump
from tests.test_revision_files import RUFF, imported_top_level_modules

JOB_IDS = ("job-a", "job-b", "job-c")
JOB_MESSAGE_BEFORE = "    message: str | None = None\n"
JOB_FIELDS_AFTER = (
    "    message: str | None = Field(default=None, index=True)\n"
    "    fixture_note: str | None = None\n"
    "    fixture_priority: int = Field(default=0)\n"
)
FILL_THEN_DROP = re.compile(
    r'add_column\(\s*sa\.Column\("fixture_priority", sa\.Integer\(\), server_default="0", '
    r"nullable=False\)\s*\).*alter_column\(\s*\"fixture_priority\".*server_default=None",
    re.DOTALL,
)


class Project:
    """A copy of the project, and the alembic CLI run inside it against one database."""

    def __init__(self, root: Path, url: URL, data_dir: Path) -> None:
        self.root = root
        self.url = url
        self.data_dir = data_dir

    @property
    def versions_dir(self) -> Path:
        return self.root / "migrations" / "versions"

    def revision_files(self) -> set[Path]:
        return set(self.versions_dir.glob("*.py"))

    def alembic(self, *args: str) -> subprocess.CompletedProcess:
        return self.python("-m", "alembic", *args)

    def python(self, *args: str) -> subprocess.CompletedProcess:
        """The venv's Python in the copy, configured for this database."""
        environ = {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "DATABASE_URL": self.url.render_as_string(hide_password=False),
            "PYTHONPATH": str(self.root),
        }
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=environ,
            capture_output=True,
            text=True,
            check=False,
        )

    def alembic_ok(self, *args: str) -> subprocess.CompletedProcess:
        result = self.alembic(*args)
        assert result.returncode == 0, f"alembic {' '.join(args)}:\n{result.stderr}"
        return result


@pytest.fixture
def project(database_url: URL, tmp_path: Path) -> Iterator[Project]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    yield Project(copy_project(tmp_path / "project"), database_url, data_dir)


def edit_models(project: Project, before: str, after: str) -> None:
    """Replace the one occurrence of `before` in the copy's models with `after`."""
    models = project.root / "app" / "data" / "models.py"
    source = models.read_text(encoding="utf-8")
    assert source.count(before) == 1
    models.write_text(source.replace(before, after), encoding="utf-8")


def add_job_fields(project: Project) -> None:
    """The model change under test: a nullable column, a NOT NULL one with a default, an index."""
    edit_models(project, JOB_MESSAGE_BEFORE, JOB_FIELDS_AFTER)


def insert_jobs(url: URL) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for job_id in JOB_IDS:
            connection.execute(
                sa.text(
                    "INSERT INTO job (id, status, progress, downloaded_bytes, created_at, "
                    "updated_at) VALUES (:id, 'queued', 0, 0, :now, :now)"
                ),
                {"id": job_id, "now": "2024-05-01 12:30:00"},
            )
    engine.dispose()


def job_rows(url: URL, columns: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT {columns} FROM job ORDER BY id")).all()
    engine.dispose()
    return [tuple(row) for row in rows]


def ruff_problems(path: Path, *args: str) -> str:
    """Ruff's complaints about `path`, with the copy's pyproject.toml as configuration."""
    result = subprocess.run(
        [str(RUFF), *args, str(path)], cwd=path.parents[2], capture_output=True, text=True
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_unchanged_models_write_no_revision(project: Project) -> None:
    project.alembic_ok("upgrade", "head")
    before = project.revision_files()

    project.alembic_ok("revision", "--autogenerate", "-m", "nothing")

    assert project.revision_files() == before
    project.alembic_ok("check")


def test_model_change_generates_a_clean_revision_that_keeps_rows(project: Project) -> None:
    repository_files = set((PROJECT_ROOT / "migrations" / "versions").glob("*.py"))
    project.alembic_ok("upgrade", "head")
    insert_jobs(project.url)
    add_job_fields(project)
    assert project.alembic("check").returncode != 0, "the model change must show as drift"
    before = project.revision_files()

    project.alembic_ok("revision", "--autogenerate", "-m", "job priority")

    [revision] = project.revision_files() - before
    assert revision.name.endswith("_job_priority.py")
    assert set((PROJECT_ROOT / "migrations" / "versions").glob("*.py")) == repository_files
    text = revision.read_text(encoding="utf-8")
    assert "sqlmodel" not in text
    assert "sqlmodel" not in imported_top_level_modules(revision)
    assert ruff_problems(revision, "check") == ""
    assert ruff_problems(revision, "format", "--check") == ""
    assert FILL_THEN_DROP.search(text), text
    assert_listed_as_draft_head(project, revision)

    project.alembic_ok("upgrade", "head")
    columns = "id, fixture_priority, fixture_note"
    assert job_rows(project.url, columns) == [(i, 0, None) for i in JOB_IDS]
    project.alembic_ok("check")

    project.alembic_ok("downgrade", "-1")
    assert job_rows(project.url, "id") == [(i,) for i in JOB_IDS]
    project.alembic_ok("upgrade", "head")


def assert_listed_as_draft_head(project: Project, revision: Path) -> None:
    """The post-write hook put the new file in the copy's manifest, as its head."""
    migrations = project.root / "migrations"
    manifest = read_manifest(manifest_path(migrations))
    new_id = revision.name.split("-", 1)[1].split("_", 1)[0]
    assert manifest.entries[new_id].status == "draft"
    assert manifest.head == new_id
    assert manifest_problems(migrations) == []


def test_hand_written_revision_keeps_its_imports(tmp_path: Path) -> None:
    """`alembic revision -m` (no autogenerate) is how data migrations start: it needs `op`, `sa`.

    The ruff post-write hook must not strip them as unused from the empty template.
    """
    data_dir = tmp_path / "data"
    url = URL.create("sqlite", database=str(data_dir / "anibridge_jobs.db"))
    project = Project(copy_project(tmp_path / "project"), url, data_dir)
    before = project.revision_files()

    project.alembic_ok("revision", "-m", "backfill")

    [revision] = project.revision_files() - before
    assert {"alembic", "sqlalchemy"} <= imported_top_level_modules(revision), (
        "the post-write hook removed the template's imports; keep F401 ignored for "
        "migrations/versions in pyproject.toml"
    )
    assert_listed_as_draft_head(project, revision)


def test_offline_upgrade_prints_the_postgresql_script(tmp_path: Path) -> None:
    """`--sql` needs no server: the URL names an unreachable one on purpose."""
    unreachable = URL.create(
        "postgresql+psycopg", username="nobody", host="127.0.0.1", port=1, database="none"
    )
    project = Project(copy_project(tmp_path / "project"), unreachable, tmp_path / "data")

    script = project.alembic_ok("upgrade", "head", "--sql").stdout

    assert script.startswith("BEGIN;")
    assert script.rstrip().endswith("COMMIT;")
    assert re.search(r"CREATE TABLE job \(.*downloaded_bytes BIGINT", script, re.DOTALL)
    assert "CREATE TABLE strm_url_mapping (" in script
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in script


SAVE_PATH_BEFORE = "    save_path: str | None = None\n"
SAVE_PATH_AFTER = "    download_path: str | None = None\n"
TASK_HASHES = tuple(f"{index:040x}" for index in range(60))


def insert_tasks(url: URL) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO clienttask (hash, name, slug, season, episode, language, "
                "save_path, added_on, state) VALUES (:hash, 'n', 's', 1, :episode, 'German Dub', "
                ":path, '2024-05-01 12:30:00', 'queued')"
            ),
            [
                {"hash": h, "episode": i, "path": None if i % 7 == 0 else f"/downloads/{i}.mkv"}
                for i, h in enumerate(TASK_HASHES)
            ],
        )
    engine.dispose()


def task_paths(url: URL, column: str) -> RowDump:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT hash, {column} FROM clienttask")).all()
    engine.dispose()
    return RowDump(clienttask=sorted(tuple(row) for row in rows))


def test_a_renamed_field_becomes_a_reviewed_rename_that_keeps_every_value(
    project: Project,
) -> None:
    project.alembic_ok("upgrade", "head")
    insert_tasks(project.url)
    before_rows = task_paths(project.url, "save_path")
    edit_models(project, SAVE_PATH_BEFORE, SAVE_PATH_AFTER)
    before = project.revision_files()

    generated = project.alembic_ok("revision", "--autogenerate", "-m", "rename save_path")

    [revision] = project.revision_files() - before
    text = revision.read_text(encoding="utf-8")
    assert 'new_column_name="download_path"' in text, text
    assert "# REVIEW: clienttask.save_path was dropped and download_path" in text
    assert "batch_op.drop_column(" not in text and "batch_op.add_column(" not in text
    assert "Written as a rename, to review" in generated.stderr
    assert ruff_problems(revision, "check") == ""
    assert "rename_column clienttask.save_path: renames the column" in generated.stdout
    lint = project.python("-m", "app.migration.authoring.lint")
    assert lint.returncode == 1
    assert lint.stdout.count("\n") == 1 and ": rename_column clienttask.save_path: " in lint.stdout

    project.alembic_ok("upgrade", "head")
    assert task_paths(project.url, "download_path") == before_rows
    project.alembic_ok("check")

    project.alembic_ok("downgrade", "-1")
    assert task_paths(project.url, "save_path") == before_rows


JOB_UPDATED_AT = "    updated_at: datetime = Field(default_factory=utc_now, index=True)\n"
JOB_SEEN_AT = "    fixture_seen_at: datetime = Field(default_factory=utc_now)\n"


def test_a_default_factory_field_is_stopped_by_the_lint(tmp_path: Path) -> None:
    """Autogenerate writes a bare NOT NULL add_column for it, which fails on rows."""
    data_dir = tmp_path / "data"
    url = URL.create("sqlite", database=str(data_dir / "anibridge_jobs.db"))
    project = Project(copy_project(tmp_path / "project"), url, data_dir)
    project.alembic_ok("upgrade", "head")
    edit_models(project, JOB_UPDATED_AT, JOB_UPDATED_AT + JOB_SEEN_AT)
    project.alembic_ok("revision", "--autogenerate", "-m", "job seen at")

    lint = project.python("-m", "app.migration.authoring.lint")

    assert lint.returncode == 1
    assert "_job_seen_at.py: not_null job.fixture_seen_at: adds a NOT NULL column" in lint.stdout
