"""Answer "is the SQLite database already at head?" with the standard library only.

`python -m app.migration.at_head` prints the head revision and exits 0 when the
database is certainly at it, and exits 1 otherwise. The container's entrypoint
runs it in front of `alembic upgrade head`: when nothing is pending, importing
SQLAlchemy and Alembic costs twenty times more than the answer itself, so the
upgrade runs only when this module cannot say "yes" for certain. Any doubt
answers None (exit 1), never "at head":

* the revision files are read with `ast`, never imported; each of `revision`,
  `down_revision`, `branch_labels` and `depends_on` must be bound once, at
  module level, to a literal, and the history must be one Alembic accepts
  (known parents, no cycle, no clashing labels), with exactly one head;
* the settings are the ones `app.config` would accept, and the database is the
  default SQLite file under DATA_DIR or a plain `sqlite:///PATH` URL;
* the file, its folder and its migration lock pass the checks the full path
  makes, no upgrade holds the lock, the file opens read-only and its
  `alembic_version` holds exactly that head, and `PRAGMA foreign_key_check` is
  clean (the full path refuses a database with dangling references).

Nothing is cached: every call reads the revision files and the database afresh.
"""

import ast
import fcntl
import os
import re
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from app.config import DATABASE_FILE_NAME, ConfigError, parse_options
from app.migration.sqlite_files import (
    is_sqlite_file,
    migration_lock_path,
    read_only_uri,
)

VERSIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "versions"
PLAIN_SQLITE_URL = r"sqlite(?:\+pysqlite)?:///([^?#%:@]+)"
REQUIRED_NAMES = ("revision", "down_revision")
OPTIONAL_NAMES = ("branch_labels", "depends_on")
DYNAMIC_NAMES = frozenset(
    {"globals", "locals", "vars", "exec", "eval", "setattr", "__dict__", "modules", "*"}
)

RevisionGraph = dict[str, tuple[str, ...]]


def database_at_head(
    environ: Mapping[str, str] | None = None, versions_dir: Path = VERSIONS_DIR
) -> str | None:
    """The head revision when the configured database is certainly at it, else None."""
    env = os.environ if environ is None else environ
    if not settings_acceptable(env):
        return None
    database = sqlite_database_path(env)
    heads = revision_heads(versions_dir)
    if database is None or heads is None or len(heads) != 1:
        return None
    (head,) = heads
    return head if stamped_revisions(database) == [head] else None


def settings_acceptable(env: Mapping[str, str]) -> bool:
    try:
        parse_options(env)
    except ConfigError:
        return False
    return True


def sqlite_database_path(env: Mapping[str, str]) -> Path | None:
    """The SQLite file `app.config` would use, if this module can tell it exactly."""
    try:
        data_dir = Path(env.get("DATA_DIR", "./data")).expanduser()
    except RuntimeError:
        return None
    raw_url = env.get("DATABASE_URL", "").strip()
    if not raw_url:
        return data_dir / DATABASE_FILE_NAME
    plain = re.fullmatch(PLAIN_SQLITE_URL, raw_url)
    if plain is None or not data_dir.is_dir():
        return None
    return Path(plain.group(1))


def revision_heads(versions_dir: Path) -> set[str] | None:
    """What `ScriptDirectory.get_heads()` returns, or None when a file is not plain enough.

    A head is a revision no other revision names as `down_revision`; `depends_on`
    orders the graph (and may not form a cycle) but does not end a head.
    """
    parents: RevisionGraph = {}
    requirements: RevisionGraph = {}
    labels: list[str] = []
    for path in revision_files(versions_dir):
        names = literal_names(path)
        if names is None:
            return None
        revision = names["revision"]
        down = as_ids(names["down_revision"])
        depends_on = as_ids(names.get("depends_on"))
        branch_labels = as_ids(names.get("branch_labels"))
        if None in (revision, down, depends_on, branch_labels) or revision in parents:
            return None
        parents[revision] = down
        requirements[revision] = down + depends_on
        labels.extend(branch_labels)
    if not is_valid_history(requirements, labels):
        return None
    return set(parents) - {parent for ids in parents.values() for parent in ids}


def revision_files(versions_dir: Path) -> list[Path]:
    """The files Alembic loads from a (non-recursive, source-only) version location."""
    with os.scandir(versions_dir) as entries:
        return sorted(
            Path(entry.path)
            for entry in entries
            if is_revision_file_name(entry.name) and not entry.is_dir()
        )


def is_revision_file_name(name: str) -> bool:
    """Alembic's filter (a `.py` ending, no `.#` or `__init__` prefix), without a regex."""
    return name.endswith(".py") and not name.startswith((".#", "__init__"))


def is_plain_id(item: object) -> bool:
    """ASCII letters, digits and underscores only: anything else makes the check unsure."""
    return isinstance(item, str) and item.isascii() and item.replace("_", "a").isalnum()


def as_ids(value: object) -> tuple[str, ...] | None:
    """Alembic's `to_tuple` for revision ids and labels; None for anything unusual."""
    if value is None:
        return ()
    ids = (value,) if isinstance(value, str) else value
    if not isinstance(ids, tuple | list):
        return None
    if not all(is_plain_id(item) for item in ids):
        return None
    return tuple(ids)


def is_valid_history(requirements: RevisionGraph, labels: list[str]) -> bool:
    """Every parent and dependency is a known revision, there is no cycle, no label clashes."""
    known = set(requirements)
    if any(not set(ids) <= known for ids in requirements.values()):
        return False
    if len(set(labels)) != len(labels) or known & set(labels):
        return False
    placed: set[str] = set()
    while len(placed) < len(known):
        ready = {rev for rev in known - placed if set(requirements[rev]) <= placed}
        if not ready:
            return False
        placed |= ready
    return True


def literal_names(path: Path) -> dict[str, object] | None:
    """The literal values of the revision variables, each bound exactly once at module level.

    None when a variable is missing, bound twice or anywhere else (a function,
    an import, a loop...), bound to something that is not a literal, or when the
    module could rebind names dynamically (`globals()`, `exec`, `setattr`, ...).
    """
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    spelled = Counter(name for node in ast.walk(tree) for name in binding_names(node))
    tracked = REQUIRED_NAMES + OPTIONAL_NAMES
    if spelled.keys() & DYNAMIC_NAMES or any(spelled[name] > 1 for name in tracked):
        return None
    values = dict(top_level_literals(tree, tracked))
    bound_elsewhere = any(spelled[name] and name not in values for name in tracked)
    if bound_elsewhere or not all(name in values for name in REQUIRED_NAMES):
        return None
    return values


def binding_names(node: ast.AST) -> Iterator[str]:
    """Every identifier a node spells, except plain reads (and except string literals).

    Reads of the dynamic helpers (`globals`, `exec`...) are kept so they can be refused.
    """
    if isinstance(node, ast.Constant):
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        if node.id in DYNAMIC_NAMES:
            yield node.id
        return
    for _field, value in ast.iter_fields(node):
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


def top_level_literals(tree: ast.Module, names: tuple[str, ...]) -> Iterator[tuple[str, object]]:
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            try:
                yield target.id, ast.literal_eval(value)
            except ValueError:
                continue


def stamped_revisions(database: Path) -> list[str] | None:
    """The rows of `alembic_version`, read without writing anything; None on any doubt."""
    if not database_passes_preflight(database):
        return None
    try:
        with upgrade_lock_free(database):
            connection = sqlite3.connect(read_only_uri(database), uri=True)
            try:
                if connection.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    return None
                rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
            finally:
                connection.close()
    except (OSError, sqlite3.Error):
        return None
    return [row[0] for row in rows]


def database_passes_preflight(database: Path) -> bool:
    """The checks `app.migration.connection.check_sqlite_file` makes, and the lock file's."""
    folder = database.parent
    lock = migration_lock_path(database)
    try:
        is_sqlite = is_sqlite_file(database)
    except OSError:
        return False
    return (
        is_sqlite
        and os.access(folder, os.W_OK | os.X_OK)
        and os.access(database, os.R_OK | os.W_OK)
        and os.access(lock, os.R_OK | os.W_OK)
    )


@contextmanager
def upgrade_lock_free(database: Path) -> Iterator[None]:
    """Hold the upgrade lock shared, or raise BlockingIOError when an upgrade holds it."""
    fd = os.open(migration_lock_path(database), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def main() -> int:
    head = database_at_head()
    if head is None:
        return 1
    print(head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
