"""The budget's invariants on the fake store: holds, settles, refills, and the ledger's sums."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest

from shared.errors import BudgetExhausted, RateLimited
from shared.flow.limits_store import ALL_TYPES, LimitSpec
from shared.security.keyring import KeyRing, generate_keyring
from shared.tasks.models import TaskStatus, TokenHold
from shared.tasks.registry import builtin_registry
from tests.support.economy import (
    Flow,
    MovableClock,
    assert_books_balance,
    build_flow,
    finish,
    ledger_sums,
)
from tests.support.fakestore import FakeFirestore

ECHO = {"type": "echo", "payload": {"n": 1}}


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return generate_keyring()


@pytest.fixture
def flow(ring: KeyRing) -> Flow:
    return build_flow(FakeFirestore(), builtin_registry(), ring)


def test_a_tenant_without_budget_or_limits_costs_one_cached_read_and_no_writes(
    ring: KeyRing,
) -> None:
    db = FakeFirestore()
    flow = build_flow(db, builtin_registry(), ring)
    flow.config._cache_s = 60.0  # as deployed: trusted for a while
    flow.submit.submit("plain", ECHO)
    first = (db.reads, db.commits)
    for _ in range(5):
        flow.submit.submit("plain", ECHO)
    # One commit per submit (the task and its counter shard), no read.
    assert (db.reads - first[0], db.commits - first[1]) == (0, 5)
    assert db.documents("ledger") == {}
    task = next(iter(db.documents("tasks").values()))
    assert task["hold"] is None


def test_a_hold_is_stored_with_its_task_and_refuses_what_the_balance_cannot_cover(
    flow: Flow,
) -> None:
    flow.bank.grant("acme", 3)
    ids = [flow.submit.submit("acme", ECHO).task_id for _ in range(3)]
    with pytest.raises(BudgetExhausted) as caught:
        flow.submit.submit("acme", ECHO)
    assert (caught.value.balance, caught.value.price) == (0, 1)
    assert caught.value.problem()["type"].endswith("/budget-exhausted")
    tasks = flow.db.documents("tasks")
    assert len(tasks) == 3  # nothing stored for the refused one
    for task_id in ids:
        assert TokenHold.model_validate(tasks[task_id]["hold"]).id == task_id
    totals = assert_books_balance(flow, "acme")
    assert (totals.available, totals.reserved) == (0, 3)


def test_settling_charges_what_was_reported_capped_at_the_hold(ring: KeyRing) -> None:
    flow = build_flow(FakeFirestore(), builtin_registry(), ring, prices={"echo": 10})
    flow.bank.grant("acme", 100)
    reported = flow.submit.submit("acme", ECHO).task_id
    over = flow.submit.submit("acme", ECHO).task_id
    silent = flow.submit.submit("acme", ECHO).task_id
    failed = flow.submit.submit("acme", ECHO).task_id
    assert finish(flow, "acme", reported, TaskStatus.SUCCEEDED, charged=3)
    assert finish(flow, "acme", over, TaskStatus.SUCCEEDED, charged=25)
    assert finish(flow, "acme", silent, TaskStatus.SUCCEEDED)
    # A failed attempt that reported 2, retried, then failing for good having reported 1 more.
    assert finish(flow, "acme", failed, TaskStatus.QUEUED, charged=2)
    assert finish(flow, "acme", failed, TaskStatus.FAILED, charged=1)
    totals = assert_books_balance(flow, "acme")
    assert totals.spent == 3 + 10 + 10 + 3
    assert totals.reserved == 0
    assert totals.available == 100 - totals.spent
    usage = flow.usage.usage("acme")
    assert usage["period"]["spent"] == 26
    assert usage["period"]["by_type"] == {"echo": 26}


def test_a_task_that_never_ran_is_refunded_whole(flow: Flow) -> None:
    flow.bank.grant("acme", 5)
    task_id = flow.submit.submit("acme", ECHO).task_id
    opened = flow.repository.load("acme", task_id)
    from shared.tasks.models import TaskError

    assert flow.repository.fail_unstarted(
        opened, TaskError(code="integrity", message="tampered"), datetime.now(UTC)
    )
    totals = assert_books_balance(flow, "acme")
    assert (totals.available, totals.spent) == (5, 0)
    kinds = Counter(d["kind"] for d in flow.db.documents("ledger").values())
    assert kinds == {"grant": 1, "reserve": 1, "settle": 1, "refund": 1}


def test_a_settle_cannot_happen_twice_for_one_hold(flow: Flow) -> None:
    flow.bank.grant("acme", 5)
    task_id = flow.submit.submit("acme", ECHO).task_id
    assert finish(flow, "acme", task_id, TaskStatus.SUCCEEDED)
    task = flow.repository.get("acme", task_id)
    batch = flow.db.batch()
    flow.repository.events.stage(batch, task, TaskStatus.SUCCEEDED)
    from google.api_core.exceptions import AlreadyExists

    with pytest.raises(AlreadyExists):
        batch.commit()  # the replayed batch fails whole: nothing counted twice
    assert_books_balance(flow, "acme")


def test_a_replay_holds_afresh_and_settles_under_its_own_id(flow: Flow) -> None:
    flow.bank.grant("acme", 2)
    task_id = flow.submit.submit("acme", ECHO).task_id
    assert finish(flow, "acme", task_id, TaskStatus.FAILED, charged=1)
    replayed = flow.submit.replay("acme", task_id)
    assert replayed.task.status is TaskStatus.QUEUED
    hold = replayed.task.hold
    assert hold is not None
    assert (hold.id, hold.tokens) == (f"{task_id}.r1", 1)
    assert finish(flow, "acme", task_id, TaskStatus.SUCCEEDED)
    totals = assert_books_balance(flow, "acme")
    assert (totals.spent, totals.available) == (2, 0)
    # Out of tokens, the next replay is refused and the task stays as it was.
    flow.bank.grant("acme", 1)
    other = flow.submit.submit("acme", ECHO).task_id
    assert finish(flow, "acme", other, TaskStatus.FAILED)
    with pytest.raises(BudgetExhausted):
        flow.submit.replay("acme", other)
    assert flow.repository.get("acme", other).status is TaskStatus.FAILED


def test_concurrent_submits_never_overspend(ring: KeyRing) -> None:
    """16 threads, 400 submits, a balance of 150 over 8 shards: exactly 150 accepted."""
    flow = build_flow(FakeFirestore(), builtin_registry(), ring, default_shards=8)
    flow.bank.grant("acme", 150)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client(n: int) -> None:
        for _ in range(n):
            try:
                flow.submit.submit("acme", ECHO)
                kind = "accepted"
            except BudgetExhausted:
                kind = "refused"
            with lock:
                outcomes[kind] += 1

    threads = [threading.Thread(target=client, args=(25,)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {"accepted": 150, "refused": 250}
    assert len(flow.db.documents("tasks")) == 150
    totals = assert_books_balance(flow, "acme")
    assert (totals.available, totals.reserved) == (0, 150)
    assert ledger_sums(flow.db, "acme").reserves == 150


def test_a_balance_split_finer_than_the_price_is_gathered(ring: KeyRing) -> None:
    flow = build_flow(
        FakeFirestore(), builtin_registry(), ring, default_shards=4, prices={"echo": 7}
    )
    for _ in range(4):
        flow.bank.grant("acme", 3)  # 3 tokens in each of 4 shards; none covers 7
    flow.submit.submit("acme", ECHO)
    totals = assert_books_balance(flow, "acme")
    assert (totals.available, totals.reserved) == (5, 7)
    with pytest.raises(BudgetExhausted) as caught:
        flow.submit.submit("acme", ECHO)
    assert caught.value.balance == 5


def test_the_monthly_refill_happens_once_at_the_boundary(ring: KeyRing) -> None:
    clock = MovableClock(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC))
    flow = build_flow(FakeFirestore(), builtin_registry(), ring, clock=clock)
    flow.bank.set_budget("acme", monthly=4)
    for _ in range(4):
        flow.submit.submit("acme", ECHO)
    with pytest.raises(BudgetExhausted):
        flow.submit.submit("acme", ECHO)
    clock.now = datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC)
    # Four tasks still hold their tokens: the refill tops up to 4 counting them.
    with pytest.raises(BudgetExhausted):
        flow.submit.submit("acme", ECHO)
    clock.now = datetime(2027, 1, 1, tzinfo=UTC)
    accepted = 0
    errors: list[BaseException] = []

    def client() -> None:
        nonlocal accepted
        try:
            flow.submit.submit("acme", ECHO)
            accepted += 1
        except BudgetExhausted:
            pass
        except BaseException as exc:
            errors.append(exc)

    tasks = list(flow.db.documents("tasks"))
    for task_id in tasks:
        assert finish(flow, "acme", task_id, TaskStatus.SUCCEEDED)
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert accepted == 4
    refills = [d for d in flow.db.documents("ledger").values() if d["kind"] == "grant"]
    assert sorted(d["reason"] for d in refills) == [
        "monthly refill to 4 for 2026-11",
        "monthly refill to 4 for 2026-12",
        "monthly refill to 4 for 2027-01",
    ]
    assert sorted(d["amount"] for d in refills) == [0, 4, 4]
    assert_books_balance(flow, "acme")


def test_a_refused_submit_with_a_used_idempotency_key_answers_as_the_original(
    flow: Flow,
) -> None:
    flow.bank.grant("acme", 1)
    first = flow.submit.submit("acme", ECHO, idempotency_key="k-1")
    again = flow.submit.submit("acme", ECHO, idempotency_key="k-1")
    assert (again.task_id, again.replayed) == (first.task_id, True)
    with pytest.raises(BudgetExhausted):
        flow.submit.submit("acme", ECHO, idempotency_key="k-2")
    assert_books_balance(flow, "acme")


def test_rate_limits_refuse_with_headers_and_count_refusals(ring: KeyRing) -> None:
    clock_value = [1_800_000_000.5]
    flow = build_flow(FakeFirestore(), builtin_registry(), ring, rate_clock=lambda: clock_value[0])
    flow.config.set_limit("acme", ALL_TYPES, LimitSpec(rate=1, burst=2))
    accepted = [flow.submit.submit("acme", ECHO) for _ in range(2)]
    assert "RateLimit-Policy" in accepted[0].headers
    with pytest.raises(RateLimited) as caught:
        flow.submit.submit("acme", ECHO)
    assert caught.value.retry_after_s == 1
    assert caught.value.headers["RateLimit"].startswith('"tenant";r=0;t=')
    # The first refusal is written at once; the next wait for the instance's next flush.
    refused = [d for d in flow.db.documents("metric_shards").values() if d["metric"] == "refused"]
    assert [(d["tenant_id"], d["rate"]) for d in refused] == [("acme", 1)]
    with pytest.raises(RateLimited):
        flow.submit.submit("acme", ECHO)
    assert flow.admission._refusals.pending() == {("acme", "rate"): 1}
    clock_value[0] += 1.0
    flow.submit.submit("acme", ECHO)
    # Another tenant is not limited by acme's limit.
    for _ in range(5):
        assert flow.submit.submit("other", ECHO).headers == {}


def test_a_budget_and_a_limit_add_reads_but_no_commit_to_a_submit(ring: KeyRing) -> None:
    """Both ride in the task's own commit; each adds one read (its shard) at most."""
    db = FakeFirestore()
    flow = build_flow(db, builtin_registry(), ring, rate_clock=lambda: 1_800_000_000.5)
    flow.config._cache_s = 60.0
    flow.bank.grant("acme", 10_000)
    flow.config.set_limit("acme", ALL_TYPES, LimitSpec(rate=1000, burst=1000))
    flow.submit.submit("acme", ECHO)  # warms the configuration and the shard hints
    reads, commits = db.reads, db.commits
    answers = [flow.submit.submit("acme", ECHO) for _ in range(20)]
    assert db.commits - commits == 20
    assert db.reads - reads <= 2 * 20
    assert all("RateLimit" in a.headers for a in answers)
    totals = assert_books_balance(flow, "acme")
    assert totals.reserved == 21
