"""Run a writing run again when one of its statements waited its lock_timeout out.

On PostgreSQL each statement of a migration waits at most
DB_MIGRATION_TABLE_LOCK_TIMEOUT seconds for a table lock (app.migration.locking),
so the service's queries queued behind a waiting ALTER TABLE are held up no
longer than that. When the wait runs out (SQLSTATE 55P03) the attempt is rolled
back and the whole run starts again, after a pause that doubles each time, up to
DB_MIGRATION_TABLE_LOCK_RETRIES times. The pause has jitter, so replicas that
failed together do not queue up together again.

A run inside a caller's open transaction is not tried again: that transaction
is aborted, and only the caller can end it.
"""

import logging
import random
import time
from collections.abc import Callable

from sqlalchemy import Connection

from app.config import Settings
from app.migration.errors import TableLockTimeoutError

log = logging.getLogger(__name__)

FIRST_PAUSE_S = 1.0
LONGEST_PAUSE_S = 60.0


def retrying_lock_timeouts(
    run_once: Callable[[], None],
    connection: Connection,
    settings: Settings,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Call `run_once` until it gets through without a lock_timeout, a bounded number of
    times, pausing with `sleep` before each retry."""
    retries = 0 if connection.in_transaction() else settings.table_lock_retries
    for retry in range(1, retries + 2):
        try:
            run_once()
            return
        except TableLockTimeoutError as exc:
            if retry > retries:
                raise gave_up(exc, retries) from None
            pause_s = pause_before(retry)
            log.warning(
                "lock_timeout (%d s) waiting for a table lock (%s): retry %d/%d in %.1f s",
                settings.table_lock_timeout,
                exc.statement,
                retry,
                retries,
                pause_s,
            )
            sleep(pause_s)


def gave_up(exc: TableLockTimeoutError, retries: int) -> TableLockTimeoutError:
    if retries == 0:
        return exc
    return TableLockTimeoutError(
        f"{exc} (still after {retries} retries; DB_MIGRATION_TABLE_LOCK_RETRIES)", exc.statement
    )


def pause_before(retry: int) -> float:
    """FIRST_PAUSE_S doubled for each retry before this one, capped, give or take a quarter."""
    pause_s = min(LONGEST_PAUSE_S, FIRST_PAUSE_S * 2 ** (retry - 1))
    return pause_s * random.uniform(0.75, 1.25)
