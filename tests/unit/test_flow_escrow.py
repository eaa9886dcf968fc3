"""The escrow's arithmetic: plans keep every token, periods are UTC months."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.flow import escrow
from shared.flow.escrow import CHUNK, ShardState


def states(values: dict[int, int]) -> dict[int, ShardState]:
    return {i: ShardState(i, available=n, granted=n) for i, n in values.items()}


def apply(values: dict[int, int], moves: list[escrow.Move]) -> dict[int, int]:
    out = dict(values)
    for move in moves:
        out[move.source] = out.get(move.source, 0) - move.tokens
        out[move.target] = out.get(move.target, 0) + move.tokens
    return out


def test_a_small_grant_goes_to_one_shard_a_large_one_to_all() -> None:
    assert escrow.plan_grant({}, 200, 30) == {0: 30}
    assert len(escrow.plan_grant({}, 200, 500)) == 500 // CHUNK
    big = escrow.plan_grant({}, 200, 1_000_000)
    assert len(big) == 200
    assert sum(big.values()) == 1_000_000
    assert max(big.values()) - min(big.values()) <= 1


def test_a_grant_fills_the_emptiest_shards_first() -> None:
    plan = escrow.plan_grant(states({0: 500, 1: 0, 2: 10}), 3, 100)
    assert plan == {1: 50, 2: 50}


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(st.integers(0, 15), st.integers(0, 400), max_size=16),
    price=st.integers(1, 300),
)
def test_gathering_keeps_every_token_and_never_overdraws(
    values: dict[int, int], price: int
) -> None:
    moves = escrow.plan_gather(states(values), price)
    after = apply(values, moves)
    assert sum(after.values()) == sum(values.values())
    assert all(n >= 0 for n in after.values())
    if moves:
        assert max(after.values()) >= price
    elif sum(values.values()) >= price and values:
        assert max(values.values()) >= price  # nothing to gather: one shard covers it


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(st.integers(0, 63), st.integers(0, 3000), max_size=64),
    shards=st.integers(1, 64),
)
def test_refilling_keeps_every_token_and_never_overdraws(
    values: dict[int, int], shards: int
) -> None:
    values = {i: n for i, n in values.items() if i < shards}
    moves = escrow.plan_refill(states(values), shards)
    after = apply(values, moves)
    assert sum(after.values()) == sum(values.values())
    assert all(n >= 0 for n in after.values())
    assert len({m.target for m in moves}) <= escrow.MAX_REFILLS


def test_a_packed_balance_is_spread_back_over_empty_shards() -> None:
    packed = states({0: 10_000})
    moves = escrow.plan_refill(packed, 100)
    assert moves
    after = apply({0: 10_000}, moves)
    assert sum(1 for n in after.values() if n >= CHUNK) == 1 + escrow.MAX_REFILLS
    # Spread enough already: left alone.
    assert escrow.plan_refill(states(dict.fromkeys(range(60), 100)), 100) == []


def test_pick_draws_only_shards_that_cover_the_price() -> None:
    rng = random.Random(4)
    seen = {escrow.pick({0: 5, 1: 100, 2: 0}, 10, rng) for _ in range(50)}
    assert seen == {1}
    assert escrow.pick({0: 5}, 10, rng) is None
    assert escrow.pick({}, 1, rng) is None


def test_the_monthly_top_up_counts_what_running_tasks_hold() -> None:
    held = [ShardState(0, available=30, reserved=20), ShardState(1, available=10)]
    assert escrow.top_up(held, 100) == 40
    assert escrow.top_up(held, 50) == 0


def test_periods_are_utc_calendar_months() -> None:
    late = datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    assert escrow.period_of(late) == "2026-11"
    assert escrow.period_of(late + timedelta(microseconds=1)) == "2026-12"
    # 01:30 on 1 December in UTC+2 is still November in UTC.
    assert escrow.period_of(datetime(2026, 12, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-11"
    )
    assert escrow.period_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert escrow.day_of(late) == "2026-11-30"


def test_totals_balance_only_when_every_token_is_accounted_for() -> None:
    good = [ShardState(0, 5, 3, 2, 10, 0), ShardState(1, 7, 0, 0, 0, 7)]
    assert not escrow.totals(good).balanced  # moved in without a matching move out
    assert escrow.totals([*good, ShardState(2, 0, 0, 0, 7, -7)]).balanced
    assert all(s.balanced for s in good)
