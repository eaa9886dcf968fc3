"""GCRA as slot claims: the maths on an injected clock, and the sharded limiter on a fake store."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import RateLimited
from shared.flow.gcra import NONE_CLAIMED, Limit
from shared.flow.limits_store import ALL_TYPES
from shared.flow.ratelimits import RateLimiter, Verdict, headers
from tests.support.fakestore import FakeFirestore


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_window_holds_the_current_slot_and_burst_minus_one_after_it() -> None:
    limit = Limit(rate=20, burst=10)
    first, last = limit.window(100.0)
    assert (first, last) == (2000, 2009)
    assert last - first + 1 == limit.burst


def test_each_shard_owns_the_slots_of_its_residue() -> None:
    limit = Limit(rate=20, burst=10)
    assert limit.shards == 20
    for shard in range(limit.shards):
        slot = limit.next_slot(shard, NONE_CLAIMED, 100.0)
        assert slot % limit.shards == shard
        assert slot >= 2000
    # After a claim the shard's next slot is K further on.
    assert limit.next_slot(3, 2003, 100.0) == 2023


def test_a_slot_beyond_the_window_is_not_claimable_and_says_when_it_will_be() -> None:
    limit = Limit(rate=20, burst=10)
    assert limit.claimable(3, NONE_CLAIMED, 100.0) == 2003
    assert limit.claimable(15, NONE_CLAIMED, 100.0) is None  # 2015 > 2009
    # 2015 enters once floor(t*20) + 9 >= 2015: t >= 100.3.
    assert limit.seconds_until(2015, 100.0) == pytest.approx(0.3)


def test_candidate_shards_are_the_residues_of_the_window() -> None:
    assert Limit(rate=20, burst=10).candidate_shards(100.0) == list(range(10))
    assert Limit(rate=2, burst=10).candidate_shards(100.0) == [0, 1]


def test_shards_follow_the_rate_at_one_write_per_second_each() -> None:
    assert Limit(rate=0.5, burst=1).shards == 1
    assert Limit(rate=20, burst=10).shards == 20
    assert Limit(rate=100, burst=5).shards == 100
    assert Limit(rate=50_000, burst=5).shards == 256


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (1, 0), (1, True)])
def test_a_limit_refuses_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Limit(rate=rate, burst=burst)


def test_a_fresh_limit_admits_the_burst_then_the_rate() -> None:
    clock = Clock(1_800_000_000.025)  # mid-slot: each step below lands inside the next slot
    limiter = RateLimiter(FakeFirestore(), clock=clock, rng=random.Random(1))
    limit = Limit(rate=20, burst=10)
    at_once = [limiter.claim("acme", ALL_TYPES, limit).admitted for _ in range(15)]
    assert at_once.count(True) == 10
    assert at_once[10:] == [False] * 5
    # Every 1/20 s one more slot enters the window.
    admitted = 0
    for _ in range(20):
        clock.now += 0.05
        admitted += sum(limiter.claim("acme", ALL_TYPES, limit).admitted for _ in range(3))
    assert admitted == 20


def test_a_refusal_from_the_cache_costs_no_io_and_says_how_long_to_wait() -> None:
    db = FakeFirestore()
    clock = Clock(1_800_000_000.0)
    limiter = RateLimiter(db, clock=clock, rng=random.Random(2))
    limit = Limit(rate=2, burst=1)
    assert limiter.claim("acme", ALL_TYPES, limit).admitted
    reads, commits = db.reads, db.commits
    refused = limiter.claim("acme", ALL_TYPES, limit)
    assert not refused.admitted
    assert limiter.plan("acme", []) == []
    assert (db.reads, db.commits) == (reads, commits)
    assert refused.reset_s == 1  # the next slot, 0.5 s on, rounded up to whole seconds


def _plan_and_commit(
    db: FakeFirestore, limiter: RateLimiter, limits: list[tuple[str, Limit]]
) -> None:
    """What a submit does: plan under every limit, then one commit carrying every claim."""
    claims = limiter.plan("acme", limits)
    batch = db.batch()
    for claim in claims:
        claim.stage(batch)
    batch.commit()
    limiter.done(claims, committed=True)


def test_a_refusal_raises_with_the_draft_headers_and_retry_after() -> None:
    db = FakeFirestore()
    limiter = RateLimiter(db, clock=Clock(), rng=random.Random(3))
    limits = [(ALL_TYPES, Limit(rate=5, burst=2)), ("echo", Limit(rate=1, burst=1))]
    _plan_and_commit(db, limiter, limits)
    commits = db.commits
    with pytest.raises(RateLimited) as caught:
        _plan_and_commit(db, limiter, limits)
    assert db.commits == commits  # the tenant-wide slot planned first was not spent
    error = caught.value
    assert error.retry_after_s >= 1
    # Released: the next submit of another type may still take the tenant's second slot.
    _plan_and_commit(db, limiter, limits[:1])
    policy = error.headers["RateLimit-Policy"]
    assert re.fullmatch(r'"tenant";q=5;w=1;aia-burst=2, "type:echo";q=1;w=1;aia-burst=1', policy)
    assert re.fullmatch(r'"tenant";r=\d+;t=\d+, "type:echo";r=0;t=\d+', error.headers["RateLimit"])
    assert error.problem()["violated-policies"] == ["type:echo"]


def test_headers_quote_and_escape_policy_names() -> None:
    verdict = Verdict('we"ird\\é', Limit(rate=0.25, burst=3), True, 2, 4)
    made = headers([verdict])
    assert made["RateLimit-Policy"] == '"type:we\\"ird\\\\?";q=1;w=4;aia-burst=3'
    assert made["RateLimit"] == '"type:we\\"ird\\\\?";r=2;t=4'


def _max_in_any_window(times: list[float], length: float) -> int:
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > length:
            start += 1
        best = max(best, end - start + 1)
    return best


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([1.0, 3.0, 7.5, 20.0]),
    burst=st.integers(min_value=1, max_value=12),
    instances=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_many_instances_never_admit_more_than_the_gcra_bound(
    rate: float, burst: int, instances: int, seed: int
) -> None:
    """Random arrivals at several instances sharing one store: never over rate x L + burst."""
    rng = random.Random(seed)
    db = FakeFirestore()
    clock = Clock(1_800_000_000.0)
    limiters = [RateLimiter(db, clock=clock, rng=random.Random(seed + i)) for i in range(instances)]
    limit = Limit(rate=rate, burst=burst)
    admitted: list[float] = []
    start = clock.now
    for _ in range(400):
        clock.now += rng.expovariate(rate * 3)  # offered at three times the rate
        if rng.choice(limiters).claim("acme", ALL_TYPES, limit).admitted:
            admitted.append(clock.now)
    for length in (0.0, 0.5, 1.0, 3.0):
        assert _max_in_any_window(admitted, length) <= math.ceil(rate * length) + burst
    # Saturated: close to the rate over the whole run, plus the burst.
    elapsed = clock.now - start
    assert len(admitted) <= math.ceil(rate * elapsed) + burst
    assert len(admitted) >= 0.8 * rate * elapsed
