"""A waiting task's place in line: priority as a head start that ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.flow.concurrency import DEFAULT_PRIORITY, PRIORITY_STEP, rank

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_the_default_priority_keeps_submit_order() -> None:
    assert rank(T0, None) == rank(T0, DEFAULT_PRIORITY) == T0
    assert rank(T0, None) < rank(T0 + timedelta(microseconds=1), None)


def test_a_higher_priority_goes_ahead_of_what_was_submitted_shortly_before() -> None:
    low_first = rank(T0, 0)
    high_later = rank(T0 + 8 * PRIORITY_STEP, 9)
    assert high_later < low_first


def test_a_low_priority_task_ages_into_first_place() -> None:
    # Overtaken only by tasks submitted within 9 steps of it: after that it is first.
    low = rank(T0, 0)
    assert rank(T0 + 9 * PRIORITY_STEP + timedelta(seconds=1), 9) > low
    assert all(rank(T0 + 10 * PRIORITY_STEP, p) > low for p in range(10))
