"""The `anibridge` command: serve (the default), migrate, status, plan, restore.

Only `serve` imports the web service (FastAPI, SQLModel, the API): the other
commands load what they use, so `anibridge plan` and `anibridge migrate` start
as fast as the upgrade itself.
"""

import argparse
import os
import sys
from pathlib import Path

from app import app_version, migrate
from app.config import ConfigError, get_settings, load_settings
from app.logs import configure_logging


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anibridge",
        description="AniBridge: migrate the database if needed, then serve (the default), "
        "or run one of the commands below. Settings come from the environment (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {app_version()}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="migrate the database if needed, then serve (default)")
    commands.add_parser("migrate", help="upgrade the database to head and exit")
    status = commands.add_parser(
        "status", help="show where the database stands (read-only; never waits for an upgrade)"
    )
    status.add_argument("--json", action="store_true", help="print the report as JSON")
    plan = commands.add_parser(
        "plan",
        help="rehearse the upgrade and show what it would do to this database, changing "
        "nothing (exit 0: nothing to do, 2: it would change something, 1: refused or failed)",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (docs/plan.md)")
    restore = commands.add_parser("restore", help="replace the SQLite database with a backup")
    restore.add_argument(
        "backup", help="a file name from DATA_DIR/backups, or a path (anything with a slash)"
    )
    return parser.parse_args(argv)


def show_status(as_json: bool) -> None:
    """`anibridge status`: settings read without creating DATA_DIR, the database only read."""
    from app.data.models import metadata
    from app.migration.status import database_status, render

    status = database_status(load_settings(), metadata)
    print(status.as_json() if as_json else render(status))


def show_plan(as_json: bool) -> int:
    """`anibridge plan`: settings read without creating DATA_DIR; the upgrade rehearsed."""
    from app.migration.plan import plan_upgrade, render

    settings = load_settings()
    configure_logging("debug" if settings.log_level == "debug" else "warning")
    plan = plan_upgrade(settings, notice=lambda line: print(line, file=sys.stderr))
    print(plan.as_json() if as_json else render(plan))
    return plan.exit_code


def run(args: argparse.Namespace) -> int | None:
    if args.command == "status":
        show_status(args.json)
        return None
    if args.command == "plan":
        return show_plan(args.json)
    settings = get_settings()
    configure_logging(settings.log_level)
    if args.command == "restore":
        restore(settings, args.backup)
        return None
    from app.main import serve

    serve(settings)
    return None


def restore(settings, name: str) -> None:
    from app.migration.restore import restore_backup
    from app.migration.revisions import script_directory

    if not settings.is_sqlite:
        raise ConfigError("DATABASE_URL: restore works on the SQLite database only")
    database = Path(settings.database_url.database)
    backup = backup_named(settings, name)
    aside = restore_backup(backup, database, script_directory())
    kept = f"; the replaced database is kept as {aside}" if aside else ""
    print(f"restored {backup}{kept}")


def backup_named(settings, name: str) -> Path:
    """A bare file name is a file in DATA_DIR/backups; a name with a slash is a path."""
    return Path(name) if os.sep in name else settings.backups_dir / name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "migrate":
            code = migrate.main()
        else:
            code = migrate.exit_code_of(lambda: run(args))
        sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    return code


def reader_gone() -> int:
    """The reader of our output left (`anibridge plan | head -1`): exit 1 without a traceback.

    As Python's note on SIGPIPE advises (docs.python.org/3/library/signal.html):
    what is still buffered goes to /dev/null, so the flush at exit raises nothing.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
