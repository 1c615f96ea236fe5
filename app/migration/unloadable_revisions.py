"""A revision file Python cannot load, said in one line (standard library only).

A developer mid-edit leaves a syntax error, a misspelt name or a bad import in
a file under migrations/versions; Alembic loads every revision file before any
command can look at the chain, and the exception would end the command with a
traceback. `unloadable_revision_message` names the file and the error;
`revisions.load_revisions` raises it as a MigrationError wherever the project
loads the revisions (env.py, `anibridge`, lint, manifest).

`alembic heads`, `history`, `show`, `branches`, `merge` and a plain `alembic
revision` load the files before env.py (or without it), so no project code runs
between Alembic's CLI and the failure. For them this module is an Alembic plugin
(the `alembic.plugins` entry point in pyproject.toml, set up when alembic is
imported): `setup` installs an excepthook that prints the same line, as
`FAILED: ...` like Alembic's own refusals, for an exception raised while a
revision file of this project ran its top level, and hands every other
exception on to the previous hook.
"""

import sys
import traceback
from pathlib import Path
from types import TracebackType

VERSIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "versions"


def unloadable_revision_message(exc: BaseException, versions: Path = VERSIONS_DIR) -> str | None:
    """`<file> cannot be loaded: <error> (line N)` when `exc` came from loading a revision file
    in `versions`: a syntax error in it, or an exception its top level raised (an import
    included). None for any other exception."""
    versions = versions.resolve()
    if isinstance(exc, SyntaxError) and in_folder(exc.filename, versions):
        culprit, line = Path(exc.filename), exc.lineno
        error = f"{type(exc).__name__}: {exc.msg}"
    else:
        top_level = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if frame.name == "<module>" and in_folder(frame.filename, versions)
        ]
        if not top_level:
            return None
        culprit, line = Path(top_level[-1].filename), top_level[-1].lineno
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    shown = culprit.resolve().relative_to(versions.parents[1])
    return f"{shown} cannot be loaded: {error} (line {line}); fix it and run the command again"


def in_folder(filename: str | None, folder: Path) -> bool:
    return filename is not None and Path(filename).resolve().parent == folder


def setup(plugin: object) -> None:
    """Alembic's plugin entry point: install the excepthook (the plugin registers nothing)."""
    previous = sys.excepthook

    def report_unloadable_revision(
        kind: type[BaseException], exc: BaseException, trace: TracebackType | None
    ) -> None:
        message = unloadable_revision_message(exc)
        if message is None:
            previous(kind, exc, trace)
        else:
            print(f"FAILED: {message}", file=sys.stderr)

    sys.excepthook = report_unloadable_revision
