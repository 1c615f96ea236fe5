"""Retries after a lock_timeout wait between attempts (app/migration/lock_retry.py).

The pause is injected, so the test holds every pause without waiting for it.
"""

from pathlib import Path

import pytest

from app.migration.errors import TableLockTimeoutError
from app.migration.lock_retry import FIRST_PAUSE_S, LONGEST_PAUSE_S, retrying_lock_timeouts
from tests.conftest import postgres_server_url, settings_for

RETRIES = 8  # enough for the doubling to reach LONGEST_PAUSE_S


class OwnTransaction:
    """A connection outside any caller's transaction: the run owns it, so it may retry."""

    def in_transaction(self) -> bool:
        return False


def test_lock_timeouts_are_retried_a_bounded_number_of_times_after_growing_jittered_pauses(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        postgres_server_url(), tmp_path, DB_MIGRATION_TABLE_LOCK_RETRIES=str(RETRIES)
    )
    attempts: list[int] = []
    pauses: list[float] = []

    def always_waits_out_its_lock() -> None:
        attempts.append(len(pauses))
        raise TableLockTimeoutError("canceling statement due to lock timeout", "ALTER TABLE job")

    with pytest.raises(TableLockTimeoutError, match=f"still after {RETRIES} retries"):
        retrying_lock_timeouts(
            always_waits_out_its_lock, OwnTransaction(), settings, sleep=pauses.append
        )

    assert attempts == list(range(RETRIES + 1)), "each attempt but the first follows one pause"
    doubling = [min(LONGEST_PAUSE_S, FIRST_PAUSE_S * 2**n) for n in range(RETRIES)]
    assert len(pauses) == len(doubling)
    for pause, nominal in zip(pauses, doubling, strict=True):
        assert 0.75 * nominal <= pause <= 1.25 * nominal, (pauses, doubling)
    assert pauses != doubling, "no jitter: replicas that failed together retry together"
