"""The container's start-up decisions, made once, in Python (docker/entrypoint.sh runs them).

`python -m app.start_up ids` prints `PUID PGID CHOWN_RECURSIVE DATABASE_FILE_NAME`
checked, for the entrypoint's root set-up.

`python -m app.start_up run COMMAND...`, as the app user, brings the database to
head and then replaces itself with COMMAND:

* settings are checked first with `app.config` (a bad value is one line naming
  the variable, exit 2);
* DB_MIGRATE_ON_STARTUP=false, `anibridge restore FILE` (it replaces the
  database, maybe one a newer release left) and `anibridge migrate` (the
  upgrade itself) skip the upgrade;
* the service (`anibridge`, `anibridge serve`) on PostgreSQL checks and upgrades
  in its own process, which imports the driver anyway (a separate process
  would pay that import once more: docs/performance.md, "6. Container start at head");
* otherwise `app.migration.at_head` answers from the manifest and the SQLite
  file, and only when it cannot say "at head" does `alembic upgrade head` run;
  the command is then told not to upgrade again (DB_MIGRATE_ON_STARTUP=false).

A failed upgrade is one line and its exit status; the command does not run.
`docker stop` during the upgrade: tini sends SIGTERM to the whole process group,
Alembic's process ends (its transaction rolls back) and this one says so.

Standard library only until the command runs: the check must stay cheaper than
the imports it saves.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from app.config import DATABASE_FILE_NAME, ConfigError, parse_bool, parse_options
from app.migration.at_head import database_at_head

MAX_ID = 4294967294
SERVICE_COMMANDS = ([], ["serve"])
SKIPPING_COMMANDS = ("restore", "migrate")
POSTGRES_URL_PREFIXES = ("postgresql://", "postgresql+psycopg://")
USAGE = "usage: python -m app.start_up ids | run COMMAND [ARGUMENT...]"


class StartUpError(Exception):
    """The start cannot go on; the message is the one line to show."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"{stamp} [entrypoint] {message}", file=sys.stderr, flush=True)


def parse_id(name: str, raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and int(raw) <= MAX_ID):
        raise StartUpError(f"{name}='{raw}' is not valid: use a numeric id from 0 to {MAX_ID}")
    return int(raw)


def root_settings(env: Mapping[str, str]) -> str:
    """The checked values the root set-up needs, on one line."""
    puid = parse_id("PUID", env.get("PUID", "1000"))
    pgid = parse_id("PGID", env.get("PGID", "1000"))
    try:
        recursive = parse_bool("CHOWN_RECURSIVE", env.get("CHOWN_RECURSIVE", "true"))
    except ConfigError as exc:
        raise StartUpError(str(exc)) from None
    return f"{puid} {pgid} {str(recursive).lower()} {DATABASE_FILE_NAME}"


def anibridge_subcommand(command: Sequence[str]) -> list[str] | None:
    """The arguments after `anibridge` (by any path), or None for another program."""
    if os.path.basename(command[0]) != "anibridge":
        return None
    return list(command[1:])


def upgrade_plan(command: Sequence[str], env: Mapping[str, str]) -> str:
    """`skip: WHY`, `service` (it upgrades in its own process) or `here`."""
    try:
        migrate = parse_options(env)["migrate_on_startup"]
    except ConfigError as exc:
        raise StartUpError(str(exc)) from None
    arguments = anibridge_subcommand(command)
    if not migrate:
        return f"skip: DB_MIGRATE_ON_STARTUP={env['DB_MIGRATE_ON_STARTUP']}"
    if arguments and arguments[0] in SKIPPING_COMMANDS:
        return f"skip: anibridge {arguments[0]} runs without upgrading first"
    url = env.get("DATABASE_URL", "").strip()
    if arguments in SERVICE_COMMANDS and url.startswith(POSTGRES_URL_PREFIXES):
        return "service"
    return "here"


def upgrade_to_head() -> None:
    """The fast check, then `alembic upgrade head` only when it cannot vouch."""
    head = database_at_head()
    if head is not None:
        log(f"the database schema is at head ({head}): nothing to upgrade")
        return
    log("upgrading the database schema: alembic upgrade head")
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopped.append(True))
    status = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"]).returncode
    if stopped:
        raise StartUpError(
            "stopped during the database upgrade, which was rolled back; "
            "the next start runs it again",
            128 + signal.SIGTERM,
        )
    if status != 0:
        exit_status = status if status > 0 else 128 - status
        raise StartUpError(
            f"the database upgrade failed (exit {exit_status}); the service was not started",
            exit_status,
        )
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(command: Sequence[str]) -> None:
    """Bring the database to head as planned, then become `command` (never returns)."""
    plan = upgrade_plan(command, os.environ)
    if plan.startswith("skip: "):
        log(f"{plan.removeprefix('skip: ')}: not upgrading the database")
    elif plan == "service":
        log("PostgreSQL: the service checks the schema and upgrades it in its own process")
    else:
        upgrade_to_head()
        os.environ["DB_MIGRATE_ON_STARTUP"] = "false"
    log(f"starting: {' '.join(command)}")
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        raise StartUpError(f"cannot run {command[0]}: {exc.strerror}", 127) from None


def main(argv: Sequence[str]) -> int:
    try:
        if argv[:1] == ["ids"] and len(argv) == 1:
            print(root_settings(os.environ))
            return 0
        if argv[:1] == ["run"] and len(argv) > 1:
            run(argv[1:])
        raise StartUpError(f"no command given (the image's default is: anibridge); {USAGE}")
    except StartUpError as exc:
        print(f"[entrypoint] error: {exc}", file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
