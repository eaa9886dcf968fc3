"""The retry schedule, with an injected clock and random source, and what each answer means."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from shared.webhooks.egress import MAX_RETRY_AFTER_S, Response, parse_retry_after
from shared.webhooks.schedule import SCHEDULE_S, RetryPolicy, Verdict, verdict_of


class Midpoint(random.Random):
    """random() always 0.5: jitter factor exactly 1."""

    def random(self) -> float:
        return 0.5


def test_the_schedule_is_svix_s_eight_attempts_over_about_a_day() -> None:
    assert SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert timedelta(seconds=sum(SCHEDULE_S)) == timedelta(hours=27, minutes=35, seconds=5)


def test_next_attempts_follow_the_schedule_then_give_up() -> None:
    policy = RetryPolicy(rng=Midpoint())
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    when = now
    times: list[timedelta | None] = []
    for failed in range(1, 9):
        next_at = policy.next_attempt_at(when, failed)
        if next_at is None:
            times.append(None)
            break
        times.append(next_at - when)
        when = next_at
    assert times == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
        timedelta(hours=10),
        None,
    ]
    assert policy.max_attempts == 8


def test_long_delays_get_at_most_ten_percent_jitter_and_short_ones_none() -> None:
    policy = RetryPolicy(rng=random.Random(7))
    for failed, base in enumerate(SCHEDULE_S[1:], start=1):
        delays = {policy.delay_after(failed) for _ in range(200)}
        if base < 300:
            assert delays == {base}
        else:
            assert all(0.9 * base <= d <= 1.1 * base for d in delays if d is not None)
            assert len(delays) > 100  # spread, not one value


def test_retry_after_is_never_undercut() -> None:
    policy = RetryPolicy(rng=Midpoint())
    assert policy.delay_after(1, retry_after_s=120) == 120
    assert policy.delay_after(2, retry_after_s=120) == 300
    assert policy.delay_after(8, retry_after_s=1) is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.SUCCEEDED),
        (204, Verdict.SUCCEEDED),
        (299, Verdict.SUCCEEDED),
        (301, Verdict.FAILED),
        (302, Verdict.FAILED),
        (400, Verdict.FAILED),
        (401, Verdict.FAILED),
        (404, Verdict.FAILED),
        (408, Verdict.RETRY),
        (410, Verdict.GONE),
        (425, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (None, Verdict.RETRY),
    ],
)
def test_verdicts(status: int | None, verdict: Verdict) -> None:
    error = None if status is not None else "timeout"
    assert verdict_of(Response(status, 0.1, error=error)) is verdict


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 7 ", now) == 7
    assert parse_retry_after("Sun, 01 Mar 2026 12:02:00 GMT", now) == 120
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", now) == 0
    assert parse_retry_after("999999999", now) == MAX_RETRY_AFTER_S
    for junk in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(junk, now) is None
