"""The revision patterns of app/migration/patterns.py, as the docs write them, on both engines.

The examples of docs/migrations.md ("PostgreSQL: locks, timeouts and
autocommit blocks", "Data migrations") and docs/replicas.md are taken from the
docs as written (but for the names of the columns they add, FIXTURE_COLUMNS) and
planted after the real head in a copy of the project: a
nullable column, its index built with `outside_transaction()`, and a fill with
`fill_in_batches`. On them run pytest-alembic's built-in and experimental tests
and the documented data test (in a pytest of their own, set up as
pytest-alembic's docs show), the real upgrade with rows, and the offline SQL.
"""

import itertools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

import app.migration.patterns
from app.config import Settings
from app.migration.errors import MigrationError
from app.migration.patterns import next_batch_size
from app.migration.revisions import current_heads, script_directory
from tests.chain import InjectedRevision, copy_project, plant_revisions
from tests.conftest import settings_for
from tests.faults import JOB_COLUMNS, seed_job_rows, upgrade_environment

REPO_ROOT = Path(__file__).resolve().parents[1]
PRIORITY = "CASE WHEN status IN ('queued', 'downloading') THEN 1 ELSE 0 END"
EXAMPLE = re.compile(r"<!-- docs-example: (?P<name>[\w-]+) -->\n```python\n(?P<code>.*?)```", re.S)
FIXTURE_COLUMNS = {"priority": "fixture_priority", "seen_at": "fixture_seen_at"}
"""The columns the docs' examples add to job, and the names the suite plants them under: a
developer who adds one for real, as the walkthrough adds job.priority, must not find a planted
example adding it again ("duplicate column")."""
DOCS_COLUMN = re.compile("|".join(FIXTURE_COLUMNS))

REVISION_HEAD = '''"""{name}, from {doc}.

Revision ID: {revision}
Revises: {down_revision}
Create Date: 2026-12-07 12:00:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.migration.patterns import fill_in_batches, outside_transaction

revision: str = "{revision}"
down_revision: str | Sequence[str] | None = "{down_revision}"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


'''


def real_head() -> str:
    return script_directory().get_current_head()


def docs_text(doc: str) -> str:
    """docs/<doc> with the columns its examples add renamed as the suite plants them."""
    text = (REPO_ROOT / "docs" / doc).read_text()
    return DOCS_COLUMN.sub(lambda match: FIXTURE_COLUMNS[match[0]], text)


def docs_examples(doc: str) -> dict[str, str]:
    """The python blocks of docs/<doc> marked `<!-- docs-example: NAME -->`, by name."""
    return {match["name"]: match["code"] for match in EXAMPLE.finditer(docs_text(doc))}


@dataclass(frozen=True)
class DocsChain:
    """Revisions written from a doc's examples, in order; a block that is a whole revision
    file (it starts with its docstring) is written as it is."""

    doc: str
    revisions: tuple[tuple[str, str], ...]
    """(example name, revision id)"""

    @property
    def last(self) -> str:
        return self.revisions[-1][1]

    def plant(self, project: Path) -> None:
        examples = docs_examples(self.doc)
        versions = project / "migrations" / "versions"
        down_revision = real_head()
        for minute, (name, revision) in enumerate(self.revisions):
            code = examples[name]
            if not code.startswith('"""'):
                head = REVISION_HEAD.format(
                    name=name, doc=self.doc, revision=revision, down_revision=down_revision
                )
                code = head + code
            path = versions / f"2026_12_07_12{minute:02d}-{revision}_{name.replace('-', '_')}.py"
            path.write_text(code)
            down_revision = revision


MIGRATIONS_GUIDE = DocsChain(
    "migrations.md",
    (("column", "da7a00000001"), ("index", "da7a00000002"), ("fill", "da7a00000003")),
)
REPLICAS_GUIDE = DocsChain(
    "replicas.md",
    (
        ("expand-column", "e5a7d1000011"),
        ("expand-fill", "e5a7d1000012"),
        ("expand-index", "e5a7d1000013"),
    ),
)


def project_with_models_priority(tmp_path: Path, chain: DocsChain) -> Path:
    """A copy of the project with the chain planted, and its models given `job.fixture_priority`
    as the revisions add it (so pytest-alembic's model comparison has nothing to report)."""
    project = copy_project(tmp_path / "project")
    chain.plant(project)
    models = project / "app" / "data" / "models.py"
    source = models.read_text()
    job = re.search(r"^class Job\(.*\):\n", source, re.M)
    assert job, "app/data/models.py has no class Job"
    field = "    fixture_priority: int | None = Field(default=None, index=True)\n"
    models.write_text(source[: job.end()] + field + source[job.end() :])
    return project


def project_config(project: Path, settings: Settings) -> Config:
    """Alembic's config for the copy, run in this process as `anibridge migrate` runs it."""
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    config.attributes.update(settings=settings, skip_logging_setup=True)
    return config


@contextmanager
def plain_connection(url: URL) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def insert_jobs(url: URL, count: int) -> None:
    job = sa.table("job", *(sa.column(name) for name in JOB_COLUMNS))
    rows = [dict(zip(JOB_COLUMNS, row, strict=True)) for row in seed_job_rows(count)]
    with plain_connection(url) as connection:
        connection.execute(job.insert(), rows)
        connection.commit()


def scalar(url: URL, sql: str) -> object:
    with plain_connection(url) as connection:
        return connection.execute(sa.text(sql)).scalar()


@contextmanager
def statements_seen() -> Iterator[list[tuple[str, str | None]]]:
    """Every statement any engine of this process runs, with the isolation level it ran in."""
    seen: list[tuple[str, str | None]] = []

    def record(connection, _cursor, statement, *_args) -> None:
        seen.append((statement, connection.get_execution_options().get("isolation_level")))

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", record)


def index_state(url: URL) -> str | None:
    """'valid' / 'invalid' for ix_job_fixture_priority, None when it does not exist."""
    if url.get_backend_name() == "sqlite":
        found = scalar(url, "SELECT 1 FROM sqlite_master WHERE name = 'ix_job_fixture_priority'")
        return "valid" if found else None
    valid = scalar(
        url,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'ix_job_fixture_priority'",
    )
    return None if valid is None else ("valid" if valid else "invalid")


# --- pytest-alembic on the documented revisions -------------------------------

CHILD_CONFTEST = '''"""pytest-alembic as its documentation sets it up, on the parent's engine."""

import os
from pathlib import Path

import pytest
import sqlalchemy

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def alembic_config():
    return {"file": str(PROJECT / "alembic.ini")}


@pytest.fixture
def alembic_engine(tmp_path):
    """A plain engine on a fresh database: a new SQLite file, or PostgreSQL's schema emptied."""
    url = os.environ["PATTERNS_POSTGRES_URL"] or f"sqlite:///{tmp_path / 'anibridge_jobs.db'}"
    engine = sqlalchemy.create_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    yield engine
    engine.dispose()
'''


@pytest.mark.timeout(420)
def test_pytest_alembic_passes_on_the_documented_revisions(
    database_url: URL, tmp_path: Path
) -> None:
    """Built-in and experimental tests (test_downgrade_leaves_no_trace included) and the
    documented data test, all passing, none skipped."""
    project = project_with_models_priority(tmp_path, MIGRATIONS_GUIDE)
    tests = project / "pytest_alembic_tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(CHILD_CONFTEST)
    standard = REPO_ROOT / "tests" / "pytest_alembic_docs" / "test_migrations.py"
    (tests / "test_migrations.py").write_text(standard.read_text())
    (tests / "test_fill_job_priority.py").write_text(docs_examples("migrations.md")["data-test"])
    is_postgres = database_url.get_backend_name() == "postgresql"
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PATTERNS_POSTGRES_URL": database_url.render_as_string(False) if is_postgres else "",
    }
    env.pop("DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "pytest_alembic_tests", "-q", "-p", "no:randomly"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert re.fullmatch(r"=* ?7 passed in .*", summary), summary


# --- the real upgrade ---------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("chain", [MIGRATIONS_GUIDE, REPLICAS_GUIDE], ids=lambda c: c.doc)
def test_documented_revisions_upgrade_a_database_with_rows(
    database_url: URL, tmp_path: Path, chain: DocsChain
) -> None:
    """Every row filled as `set_` says, in several committed batches; the index built (on
    PostgreSQL CONCURRENTLY, outside a transaction, and valid)."""
    settings = settings_for(database_url, tmp_path / "data")
    project = copy_project(tmp_path / "project")
    chain.plant(project)
    config = project_config(project, settings)
    command.upgrade(config, real_head())
    rows = 3000
    insert_jobs(database_url, rows)

    with statements_seen() as seen:
        command.upgrade(config, "head")

    with plain_connection(database_url) as connection:
        assert current_heads(connection) == (chain.last,)
    assert scalar(database_url, "SELECT count(*) FROM job WHERE fixture_priority IS NULL") == 0
    right = scalar(database_url, f"SELECT count(*) FROM job WHERE fixture_priority = {PRIORITY}")
    assert right == rows
    assert index_state(database_url) == "valid"
    batches = [(statement, level) for statement, level in seen if "UPDATE job SET" in statement]
    assert len(batches) > 1 and {level for _s, level in batches} == {"AUTOCOMMIT"}, batches
    if database_url.get_backend_name() == "postgresql":
        assert all(statement.startswith("WITH batch AS") for statement, _l in batches), batches
        windows = [statement for statement, _level in seen if "LIMIT" in statement]
        assert len(windows) == len(batches), "a batch's keys read in a statement of their own"
        builds = [
            (s, level) for s, level in seen if "ix_job_fixture_priority" in s and "CREATE" in s
        ]
        assert builds == [
            (
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_job_fixture_priority "
                "ON job (fixture_priority)",
                "AUTOCOMMIT",
            )
        ]


FILL_RANK_REVISIONS = (
    InjectedRevision(
        "f111ed000001",
        "Give jobs a unique rank",
        '    op.add_column("job", sa.Column("fixture_rank", sa.Integer(), nullable=True))\n'
        '    op.create_index("uq_job_fixture_rank", "job", ["fixture_rank"], unique=True)',
    ),
    InjectedRevision(
        "f111ed000002",
        "Fill the rank from the progress",
        "    from app.migration.patterns import fill_in_batches\n\n"
        "    fill_in_batches(\n"
        '        "job", set_="fixture_rank = CAST(progress AS INTEGER)",'
        ' where="fixture_rank IS NULL", batch_size=100\n'
        "    )",
    ),
)


@pytest.mark.timeout(120)
def test_a_fill_that_failed_part_way_continues_on_the_next_run(
    database_url: URL,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A duplicate rank stops the fill in its 8th batch of 100: the 7 batches before stay
    committed, the revision unstamped; once the row is fixed, the next run fills the 300 left,
    logging its progress."""
    settings = settings_for(database_url, tmp_path / "data")
    project = copy_project(tmp_path / "project")
    plant_revisions(project, FILL_RANK_REVISIONS)
    config = project_config(project, settings)
    command.upgrade(config, real_head())
    insert_jobs(database_url, 1000)
    with plain_connection(database_url) as connection:
        ids = connection.execute(sa.text("SELECT id FROM job ORDER BY id")).scalars().all()
        ranks = [{"id": job_id, "rank": number} for number, job_id in enumerate(ids)]
        ranks[700]["rank"] = 100
        connection.execute(sa.text("UPDATE job SET progress = :rank WHERE id = :id"), ranks)
        connection.commit()

    with pytest.raises(MigrationError, match="after an autocommit block had committed part"):
        command.upgrade(config, "head")

    with plain_connection(database_url) as connection:
        assert current_heads(connection) == ("f111ed000001",)
    assert scalar(database_url, "SELECT count(*) FROM job WHERE fixture_rank IS NOT NULL") == 700
    with plain_connection(database_url) as connection:
        connection.execute(
            sa.text("UPDATE job SET progress = 700 WHERE id = :id"), {"id": ids[700]}
        )
        connection.commit()

    caplog.set_level(logging.INFO, logger="app.migration.patterns")
    monkeypatch.setattr(app.migration.patterns, "PROGRESS_EVERY_S", 0)
    command.upgrade(config, "head")
    with plain_connection(database_url) as connection:
        assert current_heads(connection) == ("f111ed000002",)
    filled = "SELECT count(*) FROM job WHERE fixture_rank = CAST(progress AS INTEGER)"
    assert scalar(database_url, filled) == 1000
    progress = re.findall(r"Filling job: (\d+) rows so far \(batches of 100\)", caplog.text)
    assert progress == ["0"] * 7 + ["100", "200", "300"], caplog.text
    assert re.search(r"Filled job: 300 rows in ", caplog.text), caplog.text


def guide_before_its_revisions(database_url: URL, tmp_path: Path, jobs: int) -> Config:
    """A copy of the project with the migrations guide's revisions planted, upgraded to the
    real head (just before them) with `jobs` jobs; its config."""
    settings = settings_for(database_url, tmp_path / "data")
    project = copy_project(tmp_path / "project")
    MIGRATIONS_GUIDE.plant(project)
    config = project_config(project, settings)
    command.upgrade(config, real_head())
    insert_jobs(database_url, jobs)
    return config


@pytest.mark.timeout(120)
def test_batches_grow_while_they_take_less_than_the_target_time(
    database_url: URL,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without `batch_size` the first batch is FIRST_BATCH_ROWS keys; batches of 100 rows take
    far less than BATCH_SECONDS, so the next ones grow, never more than twice the last."""
    config = guide_before_its_revisions(database_url, tmp_path, jobs=3000)
    caplog.set_level(logging.INFO, logger="app.migration.patterns")
    monkeypatch.setattr(app.migration.patterns, "FIRST_BATCH_ROWS", 100)
    monkeypatch.setattr(app.migration.patterns, "PROGRESS_EVERY_S", 0)

    command.upgrade(config, "head")

    sizes = [int(size) for size in re.findall(r"\(batches of (\d+)\)", caplog.text)]
    assert sizes[0] == 100 and max(sizes) > 100, sizes
    assert all(size <= 2 * last for last, size in itertools.pairwise(sizes)), sizes
    assert (
        scalar(database_url, f"SELECT count(*) FROM job WHERE fixture_priority = {PRIORITY}")
        == 3000
    )


def test_the_next_batch_is_sized_to_take_the_target_time() -> None:
    """Twice the last at most when it was fast, in proportion when slow, MIN_BATCH_ROWS at least."""
    target = app.migration.patterns.BATCH_SECONDS
    minimum = app.migration.patterns.MIN_BATCH_ROWS
    assert next_batch_size(1000, target / 10) == 2000
    assert next_batch_size(1000, 0.0) == 2000
    assert abs(next_batch_size(1000, target * 2.5) - 400) <= 1
    assert next_batch_size(1000, target * 1000) == minimum


@pytest.mark.timeout(120)
def test_inside_a_callers_transaction_everything_runs_in_it(
    database_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index built in the caller's transaction (no CONCURRENTLY), every batch of the fill
    in it, the reason logged once; the caller's rollback takes it all back."""
    config = guide_before_its_revisions(database_url, tmp_path, jobs=3000)
    caplog.set_level(logging.INFO, logger="app.migration.patterns")

    with plain_connection(database_url) as connection, statements_seen() as seen:
        transaction = connection.begin()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        filled = connection.execute(
            sa.text(f"SELECT count(*) FROM job WHERE fixture_priority = {PRIORITY}")
        )
        assert filled.scalar() == 3000
        assert current_heads(connection) == (MIGRATIONS_GUIDE.last,)
        transaction.rollback()

    assert "AUTOCOMMIT" not in {level for _statement, level in seen}
    builds = [statement for statement, _level in seen if "CREATE INDEX" in statement]
    assert builds == [
        "CREATE INDEX IF NOT EXISTS ix_job_fixture_priority ON job (fixture_priority)"
    ]
    assert caplog.text.count("The migration runs inside a transaction its caller opened") == 1
    with plain_connection(database_url) as connection:
        assert current_heads(connection) == (real_head(),)
    assert index_state(database_url) is None


@pytest.mark.timeout(60)
def test_a_table_without_a_single_column_primary_key_needs_a_key(
    database_url: URL, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "data")
    project = copy_project(tmp_path / "project")
    upgrade = (
        "    from app.migration.patterns import fill_in_batches\n\n"
        '    fill_in_batches("episodeavailability", set_="height = 0", where="height IS NULL")'
    )
    plant_revisions(project, [InjectedRevision("f111ed000003", "Fill", upgrade)])

    with pytest.raises(MigrationError) as refusal:
        command.upgrade(project_config(project, settings), "head")

    message = str(refusal.value)
    assert "\n" not in message
    assert "fill_in_batches('episodeavailability'): the table has no single-column primary key" in (
        message
    )
    assert "pass key=" in message


# --- offline ------------------------------------------------------------------


def documented_console(doc: str, command_line: str) -> list[str]:
    """The lines the doc shows after `$ <command_line>`, without the elided ones (`...`)."""
    block = docs_text(doc).split(f"$ {command_line}\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and line != "..."]


@pytest.mark.timeout(120)
def test_offline_sql_is_the_documented_single_update_in_an_autocommit_block(
    database_url: URL, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    MIGRATIONS_GUIDE.plant(project)
    command_line = "alembic upgrade da7a00000002:da7a00000003 --sql"
    env = upgrade_environment(project, database_url, tmp_path / "data")
    run = subprocess.run(
        [sys.executable, "-m", *command_line.split()],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    shown = documented_console("migrations.md", command_line)
    start = lines.index(shown[0])
    assert lines[start : start + len(shown)] == shown, run.stdout
    assert sum(line.startswith("UPDATE job ") for line in lines) == 1, run.stdout
