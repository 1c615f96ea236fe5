"""A local database after a git branch switch: a revision this checkout lacks, applied by this
same version, gets a line that can be acted on, and following it works.

Two copies of the project share one DATA_DIR, as two branches of one clone do:
`main` (today's revisions) and `feature` (two more on top, or a second head).
The database is upgraded on `feature`, then every command is run on `main`.
"""

import hashlib
import re
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from app.migration.revisions import script_directory
from tests.test_autogenerate import Project, copy_project
from tests.test_revision_authoring import branch_revision

pytestmark = pytest.mark.timeout(240)

WRITING_COMMANDS = {
    "alembic upgrade head": ("-m", "alembic", "upgrade", "head"),
    "alembic downgrade -1": ("-m", "alembic", "downgrade", "-1"),
    "alembic stamp head": ("-m", "alembic", "stamp", "head"),
    "anibridge migrate": ("-m", "app.cli", "migrate"),
    "python -m app.migrate": ("-m", "app.migrate"),
    "anibridge serve": ("-m", "app.cli", "serve"),
}
COMMAND = re.compile(r"`((?:alembic|anibridge) [^`]+)`")


def branches(tmp_path: Path) -> tuple[Project, Project]:
    """`main` on a SQLite database at head, and `feature`, a copy of it, on the same database."""
    data_dir = tmp_path / "data"
    url = URL.create("sqlite", database=str(data_dir / "anibridge_jobs.db"))
    main = Project(copy_project(tmp_path / "main"), url, data_dir)
    main.alembic_ok("upgrade", "head")
    feature = Project(tmp_path / "feature", url, data_dir)
    shutil.copytree(main.root, feature.root, ignore=shutil.ignore_patterns("__pycache__"))
    return main, feature


def add_revision(project: Project, table: str, *head: str) -> str:
    """A revision creating `table`, on the head (or, spliced, on `head`); its id."""
    before = project.revision_files()
    splice = ("--head", head[0], "--splice") if head else ()
    project.alembic_ok("revision", "-m", f"create {table}", *splice)
    [path] = project.revision_files() - before
    branch_revision(project, path, table)
    return path.name.split("-", 1)[1].split("_", 1)[0]


def acted_on(line: str) -> list[str]:
    """The commands the line names, in order."""
    return COMMAND.findall(line)


def refusal(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "this checkout does not have" in line]
    assert len(lines) == 1, output
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamped(database: Path) -> set[str]:
    connection = sqlite3.connect(database)
    try:
        return {row[0] for row in connection.execute("SELECT version_num FROM alembic_version")}
    finally:
        connection.close()


@pytest.fixture
def switched(tmp_path: Path) -> tuple[Project, Project, list[str]]:
    """The database upgraded on `feature` through two revisions `main` lacks."""
    main, feature = branches(tmp_path)
    added = [add_revision(feature, "feature_one"), add_revision(feature, "feature_two")]
    feature.alembic_ok("upgrade", "head")
    return main, feature, added


def test_the_line_names_the_downgrade_on_the_other_branch_and_it_works(switched) -> None:
    main, feature, (first, second) = switched
    shared = script_directory().get_current_head()

    line = refusal(main.python("-m", "app.cli", "migrate"))

    assert f"revision {second}, which this checkout does not have" in line
    assert f"check out the branch that has {first}" in line
    downgrade, _restore = acted_on(line)
    assert downgrade == f"alembic downgrade {shared}"
    feature.alembic_ok(*shlex.split(downgrade)[1:])
    assert main.python("-m", "app.cli", "migrate").returncode == 0
    assert stamped(Path(main.url.database)) == {shared}


def test_the_line_names_the_backup_taken_before_and_restoring_it_works(switched) -> None:
    main, _feature, (first, _second) = switched
    shared = script_directory().get_current_head()

    line = refusal(main.python("-m", "app.cli", "migrate"))

    _downgrade, restore = acted_on(line)
    assert f"restore the backup taken before {first} was applied" in line
    backup = Path(shlex.split(restore)[2])
    assert backup.name.startswith(f"anibridge_jobs-{shared}-")
    restored = main.python("-m", "app.cli", *shlex.split(restore)[1:])
    assert restored.returncode == 0, restored.stderr
    assert main.python("-m", "app.cli", "migrate").returncode == 0
    assert stamped(Path(main.url.database)) == {shared}


def database_with_half_merged_heads(tmp_path: Path) -> tuple[Project, Project, str, str]:
    """A database at two heads: one `main` has, one only `feature` has."""
    main, feature = branches(tmp_path)
    shared = script_directory().get_current_head()
    known = add_revision(main, "on_both")
    shutil.copy2(
        main.versions_dir / next(p.name for p in main.revision_files() if known in p.name),
        feature.versions_dir,
    )
    unknown = add_revision(feature, "on_feature_only", shared)
    feature.alembic_ok("upgrade", "heads")
    assert stamped(Path(main.url.database)) == {known, unknown}
    return main, feature, known, unknown


@pytest.fixture
def half_merged(tmp_path: Path) -> tuple[Project, Project, str, str]:
    return database_with_half_merged_heads(tmp_path)


@pytest.fixture(scope="module")
def half_merged_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, Project, str, str]:
    """One such database for the commands that must refuse it (and so change nothing)."""
    return database_with_half_merged_heads(tmp_path_factory.mktemp("half_merged"))


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
def test_two_heads_one_unknown_are_refused_by_every_writing_command(
    half_merged_once, command
) -> None:
    main, _feature, known, unknown = half_merged_once
    database = Path(main.url.database)
    before = digest(database)

    line = refusal(main.python(*WRITING_COMMANDS[command]))

    assert f"revision {unknown}, which this checkout does not have" in line
    assert digest(database) == before
    assert stamped(database) == {known, unknown}


def test_two_heads_one_unknown_the_downgrade_keeps_the_known_head(half_merged) -> None:
    main, feature, known, unknown = half_merged

    line = refusal(main.python("-m", "app.cli", "migrate"))

    [downgrade, *_restore] = acted_on(line)
    assert downgrade == f"alembic downgrade {unknown}@-1"
    feature.alembic_ok(*shlex.split(downgrade)[1:])
    assert stamped(Path(main.url.database)) == {known}
    assert main.python("-m", "app.cli", "migrate").returncode == 0
