"""The container's start-up decisions, made once, in Python (docker/entrypoint.sh runs them).

`python -m app.migration.start_up ids` prints `PUID PGID CHOWN_RECURSIVE DATABASE_FILE_NAME`
checked, for the entrypoint's root set-up.

`python -m app.migration.start_up run COMMAND...`, as the app user, brings the database to
head and then replaces itself with COMMAND:

* settings are checked first with `app.config` (a bad value is one line naming
  the variable, exit 2);
* DB_MIGRATE_ON_STARTUP=false, `anibridge restore FILE` (it replaces the
  database, maybe one a newer release left), `anibridge migrate` (the upgrade
  itself), `anibridge plan` and `anibridge status` (they report on the
  database as the upgrade would find it) skip the upgrade;
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

from app.config import (
    DATABASE_FILE_NAME,
    POSTGRES_DRIVERS,
    ConfigError,
    parse_bool,
    parse_options,
)
from app.logs import DATE_FORMAT
from app.migration.at_head import database_at_head

MAX_ID = 4294967294
SERVICE_COMMANDS = ([], ["serve"])
SKIPPING_COMMANDS = ("restore", "migrate", "plan", "status")
POSTGRES_URL_PREFIXES = tuple(f"{driver}://" for driver in POSTGRES_DRIVERS)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOPPED_STATUS = 128 + signal.SIGTERM  # tini -e 143 reports it as 0: a stop is no failure
USAGE = "usage: python -m app.migration.start_up ids | run COMMAND [ARGUMENT...]"


class StartUpError(Exception):
    """The start cannot go on; the message is the one line to show."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def log(message: str) -> None:
    stamp = time.strftime(DATE_FORMAT)
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


def skip_reason(command: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why the upgrade does not run before `command`, or None when it does."""
    try:
        migrate = parse_options(env)["migrate_on_startup"]
    except ConfigError as exc:
        raise StartUpError(str(exc)) from None
    arguments = anibridge_subcommand(command)
    if not migrate:
        return f"DB_MIGRATE_ON_STARTUP={env['DB_MIGRATE_ON_STARTUP']}"
    if arguments and arguments[0] in SKIPPING_COMMANDS:
        return f"anibridge {arguments[0]} runs without upgrading first"
    return None


def left_to_the_service(command: Sequence[str], env: Mapping[str, str]) -> bool:
    """The service on PostgreSQL: it checks and upgrades in its own process."""
    url = env.get("DATABASE_URL", "").strip()
    return anibridge_subcommand(command) in SERVICE_COMMANDS and url.startswith(
        POSTGRES_URL_PREFIXES
    )


def upgrade_to_head() -> None:
    """The fast check, then `alembic upgrade head` only when it cannot vouch."""
    head = database_at_head()
    if head is not None:
        log(f"the database schema is at head ({head}): nothing to upgrade")
        return
    log("upgrading the database schema: alembic upgrade head")
    status, stopped = run_stoppable([sys.executable, "-m", "alembic", "upgrade", "head"])
    if stopped:
        when = (
            "during the database upgrade, which was rolled back"
            if status
            else "once the database upgrade had finished"
        )
        raise StartUpError(
            f"stopped {when}; the service was not started, the next start goes on from there",
            STOPPED_STATUS,
        )
    if status != 0:
        exit_status = status if status > 0 else 128 - status
        raise StartUpError(
            f"the database upgrade failed (exit {exit_status}); the service was not started",
            exit_status,
        )


def run_stoppable(program: list[str]) -> tuple[int, bool]:
    """Run `program`; its exit status, and whether SIGTERM or SIGINT came meanwhile.

    tini (`-g`) sends `docker stop`'s SIGTERM to the program too: it ends at
    once, and this process, instead of ending before it, reports it.
    """
    stopped: list[int] = []
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, lambda number, _frame: stopped.append(number))
    try:
        status = subprocess.run(program).returncode
    finally:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_DFL)
    return status, bool(stopped)


def run(command: Sequence[str]) -> None:
    """Bring the database to head as decided, then become `command` (never returns)."""
    reason = skip_reason(command, os.environ)
    if reason is not None:
        log(f"{reason}: not upgrading the database")
    elif left_to_the_service(command, os.environ):
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
        if argv == ["run"]:
            raise StartUpError("no command given (the image's default is: anibridge)")
        if argv[:1] != ["run"]:
            raise StartUpError(USAGE)
        run(argv[1:])
        return 0
    except StartUpError as exc:
        print(f"[entrypoint] error: {exc}", file=sys.stderr)
        return exc.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
