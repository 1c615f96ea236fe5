"""The revision chain as migrations/versions has it, and scratch projects to plant revisions in.

No test names a revision of migrations/versions, the head or the chain: they
are read here from the script directory, so a new revision needs no edit of
any test. The baseline is the one fact of the chain that never moves (releases
adopt as it), and is read where the adoption reads it.

A test that needs more revisions plants them in a copy of the project, after
that copy's head (`plant_revisions`): an injected revision from a template
(`InjectedRevision`) or a fixture file under tests/data/ whose `down_revision`
is None until it is planted.
"""

import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from itertools import pairwise
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.pool import NullPool

from app.config import Settings, load_settings
from app.migration.adoption.adopt import baseline_revision
from app.migration.adoption.schema_shape import app_tables
from app.migration.revisions import PROJECT_ROOT, alembic_config, script_directory

PROJECT_ITEMS = ("app", "migrations", "alembic.ini", "pyproject.toml")
FILE_DATE = "%Y_%m_%d_%H%M"
"""The date that starts a revision file's name (alembic.ini's file_template)."""
UNPLANTED_DOWN_REVISION = re.compile(r"^(down_revision\b.*=\s*)None$", re.MULTILINE)
UNPLANTED_REVISES = re.compile(r"^Revises:.*$", re.MULTILINE)


def chain_of(script: ScriptDirectory) -> tuple[str, ...]:
    """Every revision of `script`, base -> head, each after its parents (a merge after both)."""
    return tuple(reversed([rev.revision for rev in script.walk_revisions("base", "heads")]))


def downgrade_target_undoing(script: ScriptDirectory, revision: str) -> str:
    """The `alembic downgrade` target that undoes `revision` alone, while it is a head.

    `-1` is not that: Alembic refuses it at a merge revision ("Ambiguous walk"),
    and on a database with two heads (past both branches' revisions, before
    their merge) it undoes whichever it picks. `REVISION@PARENT` downgrades
    only the branch of `revision`, down to its parent; for a merge, to one of
    its parents, which leaves both branches applied, as two heads.
    """
    down = script.get_revision(revision).down_revision
    parent = down[0] if isinstance(down, tuple) else down
    return f"{revision}@{parent or 'base'}"


SCRIPT = script_directory()
BASELINE = baseline_revision(SCRIPT)
HEAD = SCRIPT.get_current_head()
CHAIN = chain_of(SCRIPT)
"""base -> head: CHAIN[0] is BASELINE, CHAIN[-1] is HEAD."""


@cache
def tables_created_by() -> dict[str, list[str]]:
    """The app tables each revision creates, in chain order.

    Found by what the revisions do: a scratch SQLite database is upgraded one
    revision at a time and its tables compared before and after each step.
    """
    created, before = {}, set()
    with tempfile.TemporaryDirectory(prefix="anibridge-chain-") as folder:
        settings = load_settings({"DATA_DIR": folder})
        engine = sa.create_engine(settings.database_url, poolclass=NullPool)
        for revision in CHAIN:
            command.upgrade(alembic_config(settings=settings), revision)
            with engine.connect() as connection:
                now = set(app_tables(connection))
            created[revision], before = sorted(now - before), now
        engine.dispose()
    return created


def after(revision: str) -> list[str]:
    """The revisions an upgrade from `revision` to head applies, in order."""
    return list(CHAIN[CHAIN.index(revision) + 1 :])


def running_upgrade_lines(start: str) -> list[str]:
    """The "Running upgrade A -> B" part of Alembic's log line for each step from `start`."""
    steps = pairwise(CHAIN[CHAIN.index(start) :])
    return [f"Running upgrade {before} -> {later}" for before, later in steps]


# --- scratch projects -------------------------------------------------------


def copy_project(target: Path) -> Path:
    """Copy what the upgrade and `alembic revision` need (code, migrations, config) to `target`."""
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for item in PROJECT_ITEMS:
        source = PROJECT_ROOT / item
        if source.is_dir():
            shutil.copytree(source, target / item, ignore=ignore)
        else:
            shutil.copy2(source, target / item)
    return target


def versions_of(project: Path) -> Path:
    return project / "migrations" / "versions"


REVISION_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {revises}
Create Date: 2026-12-01 12:00:00+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "{revision}"
down_revision: str | Sequence[str] | None = {down_revision}
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
{upgrade}


def downgrade() -> None:
    """Downgrade schema."""
{downgrade}
'''
NO_DOWNGRADE = '    raise NotImplementedError("a revision injected by the tests")'


@dataclass(frozen=True)
class InjectedRevision:
    revision: str
    message: str
    upgrade: str
    """The body of `upgrade()`, indented by four spaces."""
    downgrade: str = NO_DOWNGRADE
    """The body of `downgrade()`, likewise."""
    down_revision: str | tuple[str, ...] | None = None
    """Another injected revision (a merge names two); None: the head of the copy it goes in."""

    def source(self) -> str:
        parents = self.down_revision
        return REVISION_TEMPLATE.format(
            message=self.message,
            revision=self.revision,
            revises=", ".join(parents) if isinstance(parents, tuple) else parents or "",
            down_revision=repr(self.down_revision),
            upgrade=self.upgrade.rstrip(),
            downgrade=self.downgrade.rstrip(),
        )

    def file_suffix(self) -> str:
        slug = re.sub(r"\W+", "_", self.message.split(":")[0].lower())[:40]
        return f"{self.revision}_{slug}.py"


def fixture_revision(path: Path) -> tuple[str, str]:
    """(source, name without its date) of a fixture revision file under tests/data/."""
    return path.read_text(), path.name.split("-", 1)[1]


def project_head(project: Path) -> str:
    """The head of a scratch project's own migrations/versions."""
    return ScriptDirectory(str(project / "migrations")).get_current_head()


def after_last_file(versions: Path, count: int) -> list[str]:
    """`count` file-name dates, a minute apart, after every file already in `versions`."""
    latest = max(datetime.strptime(path.name[:15], FILE_DATE) for path in versions.glob("*.py"))
    return [(latest + timedelta(minutes=step)).strftime(FILE_DATE) for step in range(1, count + 1)]


def planted_source(source: str, project: Path) -> str:
    """`source` with an unset down_revision (and its Revises: line) set to the project's head.

    The head is read only then: planted revisions that name their parents may
    leave the copy with two heads for a while (two branches, then their merge).
    """
    if not UNPLANTED_DOWN_REVISION.search(source):
        return source
    head = project_head(project)
    source = UNPLANTED_DOWN_REVISION.sub(lambda match: f'{match[1]}"{head}"', source, count=1)
    return UNPLANTED_REVISES.sub(f"Revises: {head}", source, count=1)


def plant_revisions(project: Path, revisions: Iterable[InjectedRevision | Path]) -> list[Path]:
    """Write `revisions` into the project copy's migrations/versions, after its head.

    A revision whose down_revision is unset goes after the copy's head as it is
    when planted: the real head, or the last revision planted before it. Each
    file is named with a date after every file already there, so file order
    stays chain order. Returns the files written, in order.
    """
    versions = versions_of(project)
    revisions = list(revisions)
    written = []
    for date, revision in zip(after_last_file(versions, len(revisions)), revisions, strict=True):
        if isinstance(revision, InjectedRevision):
            source, suffix = revision.source(), revision.file_suffix()
        else:
            source, suffix = fixture_revision(revision)
        path = versions / f"{date}-{suffix}"
        path.write_text(planted_source(source, project))
        written.append(path)
    return written


def project_config(project: Path, settings: Settings) -> Config:
    """Alembic's config for a project copy, run in this process on `settings`' database."""
    config = Config(str(project / "alembic.ini"))
    config.set_main_option("script_location", str(project / "migrations"))
    config.attributes.update(settings=settings, skip_logging_setup=True)
    return config


def project_with(directory: Path, revisions: Iterable[InjectedRevision | Path]) -> Path:
    """A copy of the project in `directory`/project with `revisions` planted after its head."""
    project = copy_project(directory / "project")
    plant_revisions(project, revisions)
    return project
