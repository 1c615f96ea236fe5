"""The suite fails fast: a per-test timeout, and row dumps compared by counts and digests."""

import pytest

from tests.row_dump import RowDump

ROWS = 20_000


def big_dump() -> RowDump:
    return RowDump(
        job=[(("id", f"job-{index:05}"), ("message", "x" * 40)) for index in range(ROWS)],
        clienttask=[(("hash", f"{index:040}"),) for index in range(ROWS)],
    )


def test_one_wrong_value_is_reported_by_count_digest_and_first_row() -> None:
    expected, actual = big_dump(), big_dump()
    actual["job"][12_345] = (("id", "job-12345"), ("message", "changed"))

    with pytest.raises(AssertionError) as failure:
        assert actual == expected

    report = str(failure.value)
    assert "row dumps differ" in report
    assert f"job: {ROWS} rows" in report and f"vs {ROWS} rows" in report
    assert "first differing row #12345" in report and "'changed'" in report
    assert "clienttask" not in report.split("row dumps differ", 1)[1]
    assert len(report) < 3000


def test_a_missing_row_and_a_missing_table_are_named() -> None:
    expected, actual = big_dump(), big_dump()
    del actual["job"][-1]
    del actual["clienttask"]

    with pytest.raises(AssertionError) as failure:
        assert actual == expected

    report = str(failure.value)
    assert f"job: {ROWS - 1} rows" in report and f"row #{ROWS - 1} is only on one side" in report
    assert "clienttask: only on the right" in report


def test_every_test_runs_under_a_timeout(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 600
