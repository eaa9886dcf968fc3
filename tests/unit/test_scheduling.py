"""Cron slots across daylight saving, catch-up and overlap with an injected clock, start times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import ValidationFailed
from shared.scheduling.cron import CronSchedule
from shared.scheduling.policy import BUFFER_RECHECK, Due, Overlap, plan
from shared.scheduling.ticker import Ticked, Ticker, slot_key
from shared.tasks.models import TaskRequest
from shared.tasks.submission import start_of

NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def paris(expression: str, now: datetime = NOW) -> CronSchedule:
    return CronSchedule.parse(expression, "Europe/Paris", now=now)


# -- cron and daylight saving -----------------------------------------------------


def test_utc_schedule_fires_on_the_hour_every_hour() -> None:
    cron = CronSchedule.parse("0 * * * *", "UTC", now=NOW)
    assert cron.upcoming(cron.after(NOW) or NOW, 3) == [
        utc(2026, 6, 1, 13),
        utc(2026, 6, 1, 14),
        utc(2026, 6, 1, 15),
    ]


def test_slots_are_strictly_after_the_instant() -> None:
    cron = CronSchedule.parse("*/5 * * * *", "UTC", now=NOW)
    assert cron.after(utc(2026, 6, 1, 12, 5)) == utc(2026, 6, 1, 12, 10)
    assert cron.after(utc(2026, 6, 1, 12, 4, 59)) == utc(2026, 6, 1, 12, 5)


def test_spring_forward_a_missing_0230_runs_at_0300_local() -> None:
    # 2026-03-29: Paris goes from 02:00 CET straight to 03:00 CEST.
    cron = paris("30 2 * * *")
    slots = cron.upcoming(cron.after(utc(2026, 3, 27, 12)) or NOW, 4)
    assert slots == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first minute after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_fall_back_a_repeated_0230_runs_once_at_its_first_occurrence() -> None:
    # 2026-10-25: Paris goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    cron = paris("30 2 * * *")
    slots = cron.upcoming(cron.after(utc(2026, 10, 24, 12)) or NOW, 3)
    assert slots == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first 02:30
        utc(2026, 10, 26, 1, 30),  # 02:30 CET the next day: not 01:30 UTC on the 25th
        utc(2026, 10, 27, 1, 30),
    ]


def test_fall_back_from_inside_the_repeated_hour_does_not_fire_that_0230_again() -> None:
    cron = paris("30 2 * * *")
    # 01:10 UTC is 02:10 CET, in the second 02:xx hour: 02:30 already fired at 00:30 UTC.
    assert cron.after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_wildcard_hours_follow_elapsed_time_across_fall_back() -> None:
    cron = paris("0 * * * *")
    slots = cron.upcoming(cron.after(utc(2026, 10, 24, 23, 30)) or NOW, 4)
    assert slots == [utc(2026, 10, 25, h) for h in range(4)]  # 02:00 CEST and 02:00 CET both


@pytest.mark.parametrize(
    ("cron", "timezone", "field"),
    [
        ("61 * * * *", "UTC", "cron"),
        ("* * * *", "UTC", "cron"),
        ("* * * * * *", "UTC", "cron"),  # seconds: not offered
        ("@hourly", "UTC", "cron"),
        ("0 0 31 2 *", "UTC", "cron"),
        ("0 * * * *", "Mars/Olympus", "timezone"),
        ("0 * * * *", "localtime", "timezone"),
        ("0 * * * *", "../../etc/passwd", "timezone"),
    ],
)
def test_bad_cron_or_timezone_names_its_field(cron: str, timezone: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        CronSchedule.parse(cron, timezone, now=NOW)
    assert caught.value.field == field


# -- catch-up after an outage -----------------------------------------------------


def due(next_run_at: datetime, **changes: Any) -> Due:
    values: dict[str, Any] = {
        "next_run_at": next_run_at,
        "buffered_slot": None,
        "overlap": Overlap.SKIP,
        "catchup_window": timedelta(hours=1),
    }
    values.update(changes)
    return Due(**values)


HOURLY = CronSchedule.parse("0 * * * *", "UTC", now=NOW)


def test_a_punctual_slot_fires_and_the_next_is_the_following_slot() -> None:
    steps = plan(HOURLY, due(utc(2026, 6, 1, 12)), now=NOW, previous_finished=True)
    assert steps.fire == [utc(2026, 6, 1, 12)]
    assert steps.next_run_at == steps.due_at == utc(2026, 6, 1, 13)
    assert (steps.skipped, steps.missed) == (0, 0)


def test_after_an_outage_only_the_most_recent_missed_slot_fires_once() -> None:
    # Down from 08:00 to 12:00:30: slots 08, 09, 10, 11 and 12 passed.
    steps = plan(HOURLY, due(utc(2026, 6, 1, 8)), now=NOW, previous_finished=True)
    assert steps.fire == [utc(2026, 6, 1, 12)]
    assert steps.missed == 4
    assert steps.next_run_at == utc(2026, 6, 1, 13)


def test_a_missed_slot_older_than_the_catch_up_window_does_not_fire() -> None:
    daily = CronSchedule.parse("0 3 * * *", "UTC", now=NOW)
    steps = plan(daily, due(utc(2026, 6, 1, 3)), now=NOW, previous_finished=True)
    assert steps.fire == []
    assert steps.missed == 1
    assert steps.next_run_at == utc(2026, 6, 2, 3)
    wide = due(utc(2026, 6, 1, 3), catchup_window=timedelta(hours=23))
    assert plan(daily, wide, now=NOW, previous_finished=True).fire == [utc(2026, 6, 1, 3)]


def test_a_month_long_outage_of_a_minutely_schedule_is_bounded_and_fires_the_latest() -> None:
    every_minute = CronSchedule.parse("* * * * *", "UTC", now=NOW)
    steps = plan(every_minute, due(NOW - timedelta(days=30)), now=NOW, previous_finished=True)
    assert steps.fire == [utc(2026, 6, 1, 12, 0)]
    assert steps.next_run_at == utc(2026, 6, 1, 12, 1)
    assert steps.missed >= 10_000


def test_a_clock_inside_the_gap_is_injected_and_catch_up_is_in_utc() -> None:
    # The ticker was down over the spring-forward night: the 03:00 CEST slot still fires.
    cron = paris("30 2 * * *")
    now = utc(2026, 3, 29, 1, 20)
    steps = plan(cron, due(utc(2026, 3, 28, 1, 30)), now=now, previous_finished=True)
    assert steps.fire == [utc(2026, 3, 29, 1, 0)]
    assert steps.missed == 1


# -- overlap ----------------------------------------------------------------------------


def test_skip_does_not_fire_while_the_previous_run_goes_on() -> None:
    steps = plan(HOURLY, due(utc(2026, 6, 1, 12)), now=NOW, previous_finished=False)
    assert steps.fire == []
    assert steps.skipped == 1
    assert steps.next_run_at == utc(2026, 6, 1, 13)


def test_allow_fires_beside_a_running_previous_run() -> None:
    allow = due(utc(2026, 6, 1, 12), overlap=Overlap.ALLOW)
    assert plan(HOURLY, allow, now=NOW, previous_finished=False).fire == [utc(2026, 6, 1, 12)]


def test_buffer_one_holds_one_slot_and_fires_it_when_the_previous_run_ends() -> None:
    buffer = due(utc(2026, 6, 1, 12), overlap=Overlap.BUFFER_ONE)
    held = plan(HOURLY, buffer, now=NOW, previous_finished=False)
    assert held.fire == []
    assert held.buffered_slot == utc(2026, 6, 1, 12)
    assert held.due_at == NOW + BUFFER_RECHECK
    # Still running at the recheck: it waits, and nothing else changes.
    later = NOW + BUFFER_RECHECK
    waiting = due(utc(2026, 6, 1, 13), overlap=Overlap.BUFFER_ONE, buffered_slot=held.buffered_slot)
    still = plan(HOURLY, waiting, now=later, previous_finished=False)
    assert (still.fire, still.buffered_slot, still.due_at) == (
        [],
        held.buffered_slot,
        later + BUFFER_RECHECK,
    )
    # Finished: the held slot fires at once.
    done = plan(HOURLY, waiting, now=later, previous_finished=True)
    assert done.fire == [utc(2026, 6, 1, 12)]
    assert done.buffered_slot is None
    assert done.due_at == utc(2026, 6, 1, 13)


def test_buffer_one_skips_a_slot_that_comes_while_one_is_held() -> None:
    held = due(
        utc(2026, 6, 1, 12),
        overlap=Overlap.BUFFER_ONE,
        buffered_slot=utc(2026, 6, 1, 11),
    )
    steps = plan(HOURLY, held, now=NOW, previous_finished=False)
    assert steps.fire == []
    assert steps.buffered_slot == utc(2026, 6, 1, 11)
    assert steps.skipped == 1


def test_buffer_one_fires_the_held_slot_and_holds_the_due_one_behind_it() -> None:
    held = due(
        utc(2026, 6, 1, 12),
        overlap=Overlap.BUFFER_ONE,
        buffered_slot=utc(2026, 6, 1, 11),
    )
    steps = plan(HOURLY, held, now=NOW, previous_finished=True)
    assert steps.fire == [utc(2026, 6, 1, 11)]
    assert steps.buffered_slot == utc(2026, 6, 1, 12)


# -- delayed tasks: when a submit starts ---------------------------------------------------


def request(**fields: Any) -> TaskRequest:
    return TaskRequest.model_validate({"type": "echo", "payload": {}, **fields})


def test_delay_and_run_at_give_the_start_in_utc() -> None:
    assert start_of(request(delay_s=90), NOW) == NOW + timedelta(seconds=90)
    at = start_of(request(run_at="2026-06-01T16:00:00+02:00"), NOW)
    assert at == utc(2026, 6, 1, 14)
    assert at is not None
    assert at.tzinfo is UTC


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"delay_s": 0},
        {"delay_s": 1},
        {"run_at": "2020-01-01T00:00:00Z"},
        # Valid RFC 3339 with no UTC twin (before year 1 in UTC): in the past all the same.
        {"run_at": "0001-01-01T00:00:00+05:00"},
    ],
)
def test_past_or_within_a_second_is_now(fields: dict[str, Any]) -> None:
    assert start_of(request(**fields), NOW) is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"run_at": "2026-06-01T16:00:00Z", "delay_s": 5}, "delay_s"),
        ({"run_at": "2027-06-02T12:00:00Z"}, "run_at"),
        # Past year 9999 in UTC: far ahead, not a crash.
        ({"run_at": "9999-12-31T23:00:00-05:00"}, "run_at"),
    ],
)
def test_start_refusals_name_their_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        start_of(request(**fields), NOW)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "fields",
    [
        {"run_at": "2026-06-01T16:00:00"},  # naive
        {"run_at": 1780000000},  # a number is not RFC 3339
        {"run_at": "tomorrow"},
        {"delay_s": -1},
        {"delay_s": 366 * 86400},
    ],
)
def test_malformed_start_fields_fail_validation(fields: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        request(**fields)
    assert caught.value.errors()[0]["loc"] == (next(iter(fields)),)


# -- the ticker's loop, with an injected clock ------------------------------------------


class _CountingTicker(Ticker):
    def __init__(self) -> None:
        self.calls = 0

    def tick(self) -> Ticked:
        self.calls += 1
        return Ticked(ticks=1, tasks_dispatched=2)


def test_the_loop_ticks_every_interval_for_the_time_asked() -> None:
    clock = [0.0]
    ticker = _CountingTicker()

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    total = ticker.run(for_s=55, every_s=1, sleep=sleep, monotonic=lambda: clock[0])
    # At 0, 1, ..., 55 s: the next call (a minute after this one) takes over from there.
    assert ticker.calls == total.ticks == 56
    assert total.tasks_dispatched == 112
    assert clock[0] == 55


def test_slot_keys_are_per_schedule_and_utc_slot() -> None:
    paris_slot = datetime.fromisoformat("2026-03-29T03:00:00+02:00")
    assert slot_key("ab" * 16, paris_slot) == f"schedule:{'ab' * 16}:2026-03-29T01:00:00Z"
