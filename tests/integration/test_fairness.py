"""A tenant's own max_running, priorities among waiting tasks, and fairness across tenants.

On the emulators, through a worker fed by what Pub/Sub delivers (submits and
the releases' wake-ups), with the probe task recording the order tasks start.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import AIAError
from shared.flow.concurrency import TENANT_BLOCKED, TENANT_GROUP, slot_id
from shared.flow.limits_store import FlowConfigStore
from shared.operations.metrics import collect
from shared.tasks.diagnostic import read_probe
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.worker import Outcome, Worker

from .conftest import Pipeline

pytestmark = pytest.mark.integration


def _deliver(worker: Worker, message: dict[str, Any]) -> Any:
    data = message["data"]
    try:
        return worker.process(TaskMessage(task_id=data["task_id"], tenant_id=data["tenant_id"]))
    except AIAError as exc:  # nacked: Pub/Sub would deliver it again
        return exc.code


def _probe(pipeline: Pipeline, tenant: str, marker: str, seconds: float, **extra: Any) -> str:
    body = {"type": "probe", "payload": {"marker": marker, "seconds": seconds}, **extra}
    return pipeline.submit.submit(tenant, body).task_id


def _hold_the_only_slot(
    pipeline: Pipeline, worker: Worker, pool: ThreadPoolExecutor, tenant: str, task_id: str
) -> Future[Any]:
    """Deliver `task_id` in the background and return once it runs (and holds its slot)."""
    running = pool.submit(_deliver, worker, {"data": {"task_id": task_id, "tenant_id": tenant}})
    deadline = time.monotonic() + 30
    while pipeline.status.get(tenant, task_id).status is not TaskStatus.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return running


def _drain(
    pipeline: Pipeline,
    worker: Worker,
    tasks: dict[str, str],
    *,
    threads: int,
    watch: Callable[[], None] | None = None,
) -> None:
    """Deliver what Pub/Sub holds until every task (id -> tenant) has succeeded."""
    pending: list[Future[Any]] = []
    deadline = time.monotonic() + 180
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while time.monotonic() < deadline:
            for message in pipeline.pull(pipeline.tasks_sub, max_messages=200):
                pending.append(pool.submit(_deliver, worker, message))
            if watch is not None:
                watch()
            done = all(
                pipeline.status.get(tenant, t).status is TaskStatus.SUCCEEDED
                for t, tenant in tasks.items()
            )
            if done:
                break
            time.sleep(0.1)
        for future in pending:
            future.result()
    assert all(
        pipeline.status.get(tenant, t).status is TaskStatus.SUCCEEDED for t, tenant in tasks.items()
    )


def test_a_tenants_max_running_is_never_exceeded(pipeline: Pipeline) -> None:
    tenant = f"lim-{uuid.uuid4().hex[:8]}"
    worker = pipeline.limited_worker(lambda t: 2 if t == tenant else None)
    marker = f"tenant-{uuid.uuid4().hex[:12]}"
    ids = {_probe(pipeline, tenant, marker, 0.3): tenant for _ in range(10)}
    seen_blocked: set[str] = set()

    def watch() -> None:
        for task_id in ids:
            view = pipeline.status.get(tenant, task_id)
            if view.status is TaskStatus.QUEUED and view.blocked_by == TENANT_BLOCKED:
                seen_blocked.add(task_id)

    _drain(pipeline, worker, ids, threads=8, watch=watch)
    probe = read_probe(marker)
    assert len(probe["attempts"]) == 10
    assert probe["max_concurrency"] == 2, probe["max_concurrency"]
    assert seen_blocked
    for i in range(2):
        ref = pipeline.db.collection("concurrency_slots").document(slot_id(tenant, TENANT_GROUP, i))
        assert ref.get().get("holder") is None


def test_a_task_under_both_limits_holds_a_slot_of_each(pipeline: Pipeline) -> None:
    tenant = f"both-{uuid.uuid4().hex[:8]}"
    worker = pipeline.limited_worker(lambda t: 3 if t == tenant else None)
    keyed_marker, marker = f"key-{uuid.uuid4().hex[:12]}", f"all-{uuid.uuid4().hex[:12]}"
    keyed = {
        _probe(pipeline, tenant, keyed_marker, 0.3, concurrency_key="k", max_running=1): tenant
        for _ in range(3)
    }
    plain = {_probe(pipeline, tenant, marker, 0.3): tenant for _ in range(6)}
    _drain(pipeline, worker, {**keyed, **plain}, threads=8)
    assert read_probe(keyed_marker)["max_concurrency"] == 1
    # The plain tasks shared the tenant's 3 slots with the keyed ones.
    assert read_probe(marker)["max_concurrency"] <= 3
    for i in range(3):
        ref = pipeline.db.collection("concurrency_slots").document(slot_id(tenant, TENANT_GROUP, i))
        assert ref.get().get("holder") is None


def test_higher_priority_waiting_tasks_start_first(pipeline: Pipeline) -> None:
    tenant = f"prio-{uuid.uuid4().hex[:8]}"
    worker = pipeline.limited_worker(lambda t: 1 if t == tenant else None)
    marker = f"prio-{uuid.uuid4().hex[:12]}"
    # One task holds the tenant's only slot while the others arrive and wait.
    holder = _probe(pipeline, tenant, marker, 1.5)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = _hold_the_only_slot(pipeline, worker, pool, tenant, holder)
        low = [_probe(pipeline, tenant, marker, 0.05, priority=0) for _ in range(3)]
        high = [_probe(pipeline, tenant, marker, 0.05, priority=9) for _ in range(3)]
        for message in pipeline.pull(pipeline.tasks_sub, max_messages=200):
            if message["data"]["task_id"] in low + high:
                outcome = _deliver(worker, message)
                assert outcome.outcome is Outcome.WAITING, outcome
        assert all(pipeline.status.get(tenant, t).blocked_by == TENANT_BLOCKED for t in low + high)
        # /metrics counts them by what they wait for (other tests' waiting tasks too).
        waiting = collect(pipeline.db, ["probe"]).waiting
        assert waiting["tenant_limit"] >= 6, waiting
        assert set(waiting) == {"concurrency", "tenant_limit"}
        assert running.result().outcome is Outcome.SUCCEEDED
    # One delivery at a time: the order they start in is the order they were woken.
    _drain(pipeline, worker, dict.fromkeys(low + high, tenant), threads=1)
    order = [task_id for task_id, _, _ in read_probe(marker)["starts"]]
    assert order[0] == holder
    assert set(order[1:4]) == set(high), order
    assert set(order[4:]) == set(low), order
    assert pipeline.status.get(tenant, high[0]).priority == 9


def test_a_tenant_behind_anothers_backlog_starts_without_waiting_for_it(
    pipeline: Pipeline,
) -> None:
    busy, quiet = f"busy-{uuid.uuid4().hex[:8]}", f"quiet-{uuid.uuid4().hex[:8]}"
    tenants = {busy, quiet}
    worker = pipeline.limited_worker(lambda t: 2 if t in tenants else None)
    marker = f"fair-{uuid.uuid4().hex[:12]}"
    backlog = {_probe(pipeline, busy, marker, 0.2): busy for _ in range(30)}
    late = {_probe(pipeline, quiet, marker, 0.2): quiet for _ in range(3)}
    _drain(pipeline, worker, {**backlog, **late}, threads=8)
    order = [task_id for task_id, _, _ in read_probe(marker)["starts"]]
    assert len(order) == 33
    # Without a tenant limit the quiet tenant's tasks start after most of the 30
    # ahead of them; with one, the backlog beyond its 2 slots waits in Firestore
    # and the quiet tenant's tasks start within the first few of the busy one's.
    last_quiet = max(order.index(t) for t in late)
    assert last_quiet < 12, order
    busy_started = [i for i, t in enumerate(order) if t in backlog]
    assert busy_started[-1] > last_quiet


def test_operators_set_and_clear_a_tenants_max_running(pipeline: Pipeline) -> None:
    store = FlowConfigStore(pipeline.db, cache_s=0)
    tenant = f"ops-{uuid.uuid4().hex[:8]}"
    assert store.get(tenant).max_running is None
    assert store.set_max_running(tenant, 4).max_running == 4
    assert store.get(tenant).max_running == 4
    assert store.set_max_running(tenant, None).max_running is None
    with pytest.raises(AIAError, match="max_running"):
        store.set_max_running(tenant, 101)


def test_a_freed_slot_is_kept_for_the_task_that_waited_not_taken_by_an_arrival(
    pipeline: Pipeline,
) -> None:
    tenant = f"hand-{uuid.uuid4().hex[:8]}"
    worker = pipeline.limited_worker(lambda t: 1 if t == tenant else None)
    marker = f"hand-{uuid.uuid4().hex[:12]}"
    holder = _probe(pipeline, tenant, marker, 1.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = _hold_the_only_slot(pipeline, worker, pool, tenant, holder)
        waiter = _probe(pipeline, tenant, marker, 0.05)
        assert _deliver(worker, {"data": {"task_id": waiter, "tenant_id": tenant}}).outcome is (
            Outcome.WAITING
        )
        assert running.result().outcome is Outcome.SUCCEEDED
    # The holder's release handed its slot to the waiting task, which nobody runs yet.
    slot = pipeline.db.collection("concurrency_slots").document(slot_id(tenant, TENANT_GROUP, 0))
    kept = slot.get().to_dict() or {}
    assert (kept["holder"], kept["handed"]) == (waiter, True)
    arrival = _probe(pipeline, tenant, marker, 0.05)
    seen = _deliver(worker, {"data": {"task_id": arrival, "tenant_id": tenant}})
    assert seen.outcome is Outcome.WAITING, "an arrival took the slot kept for a waiting task"
    assert _deliver(worker, {"data": {"task_id": waiter, "tenant_id": tenant}}).outcome is (
        Outcome.SUCCEEDED
    )
    # ... whose release hands it on to the arrival, now first in line.
    assert (slot.get().to_dict() or {})["holder"] == arrival
    assert _deliver(worker, {"data": {"task_id": arrival, "tenant_id": tenant}}).outcome is (
        Outcome.SUCCEEDED
    )
    assert [t for t, _, _ in read_probe(marker)["starts"]] == [holder, waiter, arrival]
    assert (slot.get().to_dict() or {})["holder"] is None


def test_a_hand_off_nobody_takes_lapses_and_the_slot_is_free_again(pipeline: Pipeline) -> None:
    tenant = f"lapse-{uuid.uuid4().hex[:8]}"
    worker = pipeline.limited_worker(lambda t: 1 if t == tenant else None)
    slot = pipeline.db.collection("concurrency_slots").document(slot_id(tenant, TENANT_GROUP, 0))
    # Handed to a task whose wake-up was lost, kept for it 1.5 s more.
    until = datetime.now(UTC) + timedelta(seconds=1.5)
    slot.set({"holder": "e" * 32, "lease_id": None, "until": until, "handed": True})
    task_id = pipeline.submit.submit(tenant, {"type": "echo", "payload": {}}).task_id
    message = {"data": {"task_id": task_id, "tenant_id": tenant}}
    assert _deliver(worker, message).outcome is Outcome.WAITING
    time.sleep(2.0)
    assert _deliver(worker, message).outcome is Outcome.SUCCEEDED
