"""Delayed tasks and cron schedules on the official emulators: each due task and slot fires once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import queries
from shared.config import Settings
from shared.errors import NotFound, ValidationFailed
from shared.scheduling.schedules import (
    FirestoreScheduleRepository,
    ScheduleDocuments,
    StoredSchedule,
)
from shared.scheduling.service import ScheduleService
from shared.scheduling.ticker import Ticker
from shared.scheduling.timers import DueTask, FirestoreTimers
from shared.security.crypto import TaskOpener, TaskSealer
from shared.tasks.models import Task, TaskMessage, TaskStatus
from shared.tasks.worker import Outcome

from .conftest import PROJECT, Pipeline

pytestmark = pytest.mark.integration


class RacingTimers(FirestoreTimers):
    """Both tickers read the due tasks before either writes: the race the writes must settle."""

    def __init__(self, db: Any, barrier: threading.Barrier) -> None:
        super().__init__(db)
        self._barrier = barrier

    def due(self, now: datetime, limit: int) -> list[DueTask]:
        found = super().due(now, limit)
        self._barrier.wait(timeout=30)
        return found


class RacingSchedules(FirestoreScheduleRepository):
    def __init__(self, db: Any, barrier: threading.Barrier | None = None) -> None:
        super().__init__(db)
        self._barrier = barrier
        self.lose_updates = False  # a ticker that dies after submitting, before advancing

    def due(self, now: datetime, limit: int) -> list[StoredSchedule]:
        found = super().due(now, limit)
        if self._barrier is not None:
            self._barrier.wait(timeout=30)
        return found

    def update(self, stored: StoredSchedule, changes: dict[str, Any], *args: Any) -> bool:
        if self.lose_updates:
            return False
        return super().update(stored, changes, *args)


def ticker(
    p: Pipeline,
    at: datetime,
    *,
    timers: FirestoreTimers | None = None,
    schedules: FirestoreScheduleRepository | None = None,
) -> Ticker:
    return Ticker(
        timers or FirestoreTimers(p.db),
        schedules or FirestoreScheduleRepository(p.db),
        ScheduleDocuments(TaskSealer(p.ring), TaskOpener(p.ring)),
        p.submit,
        p.publisher,
        clock=lambda: at,
    )


def schedule_service(p: Pipeline, now: datetime) -> ScheduleService:
    return ScheduleService(
        FirestoreScheduleRepository(p.db),
        ScheduleDocuments(TaskSealer(p.ring), None),  # the API function's public-only sealing
        p.registry,
        Settings(project=PROJECT),
        clock=lambda: now,
    )


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def tasks_of(p: Pipeline, tenant: str) -> list[dict[str, Any]]:
    from google.cloud.firestore import FieldFilter

    query = p.db.collection("tasks").where(filter=FieldFilter("tenant_id", "==", tenant))
    return [{"id": s.id, **(s.to_dict() or {})} for s in query.stream()]


# -- delayed tasks ------------------------------------------------------------------


def test_a_delayed_task_is_stored_scheduled_unpublished_and_listed(pipeline: Pipeline) -> None:
    submitted = pipeline.submit.submit(
        "acme", {"type": "echo", "payload": {"a": 1}, "delay_s": 600}
    )
    assert submitted.status is TaskStatus.SCHEDULED
    assert pipeline.pull(pipeline.tasks_sub) == []
    doc = pipeline.db.collection("tasks").document(submitted.task_id).get().to_dict()
    assert doc["status"] == "scheduled"
    assert doc["run_at"] == submitted.run_at
    page = pipeline.status.list("acme", {"status": "scheduled"})
    assert [v.task_id for v in page.tasks] == [submitted.task_id]
    assert page.tasks[0].run_at == submitted.run_at
    # An immediate task stays out of the timer index; both carry the index shard
    # that leads the timer and sweep indexes, fixed by the task's id.
    now = pipeline.submit.submit("acme", {"type": "echo", "payload": {}})
    immediate = pipeline.db.collection("tasks").document(now.task_id).get().to_dict()
    assert "run_at" not in immediate
    assert immediate["index_shard"] == queries.index_shard(now.task_id)
    assert doc["index_shard"] == queries.index_shard(submitted.task_id)


def test_an_idempotent_replay_of_a_delayed_submit_says_scheduled(pipeline: Pipeline) -> None:
    body = {"type": "echo", "payload": {}, "delay_s": 600}
    first = pipeline.submit.submit("acme", body, "k-1")
    again = pipeline.submit.submit("acme", body, "k-1")
    assert again.replayed
    assert again.task_id == first.task_id
    assert again.status is TaskStatus.SCHEDULED
    assert again.run_at == first.run_at


def test_two_tickers_at_once_dispatch_a_due_task_once_and_it_runs(pipeline: Pipeline) -> None:
    submitted = pipeline.submit.submit(
        "acme", {"type": "echo", "payload": {"n": 7}, "delay_s": 600}
    )
    assert submitted.run_at is not None
    # Before it is due, nothing moves.
    early = ticker(pipeline, submitted.run_at - timedelta(seconds=1)).tick()
    assert early.tasks_dispatched == 0
    barrier = threading.Barrier(2)
    at = submitted.run_at + timedelta(seconds=1)
    first, second = in_parallel(
        ticker(pipeline, at, timers=RacingTimers(pipeline.db, barrier)).tick,
        ticker(pipeline, at, timers=RacingTimers(pipeline.db, barrier)).tick,
    )
    assert first.tasks_dispatched + second.tasks_dispatched == 1
    published = pipeline.pull(pipeline.tasks_sub)
    assert [m["data"] for m in published] == [{"task_id": submitted.task_id, "tenant_id": "acme"}]
    assert published[0]["attributes"]["scheduled"] == "true"
    assert ticker(pipeline, at).tick().tasks_dispatched == 0  # queued now: never again
    result = pipeline.worker.process(TaskMessage(task_id=submitted.task_id, tenant_id="acme"))
    assert result.outcome is Outcome.SUCCEEDED
    view = pipeline.status.get("acme", submitted.task_id)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.result == {"n": 7}
    assert view.run_at == submitted.run_at


def test_a_stray_early_delivery_does_not_run_a_scheduled_task(pipeline: Pipeline) -> None:
    submitted = pipeline.submit.submit("acme", {"type": "echo", "payload": {}, "delay_s": 600})
    result = pipeline.worker.process(TaskMessage(task_id=submitted.task_id, tenant_id="acme"))
    assert (result.outcome, result.detail) == (Outcome.SKIPPED, "not due")
    doc = pipeline.db.collection("tasks").document(submitted.task_id).get().to_dict()
    assert doc["status"] == "scheduled"
    assert doc["attempts"] == 0
    assert doc.get("lease_id") is None


def test_a_delayed_task_never_travels_as_a_fresh_one(pipeline: Pipeline) -> None:
    # The fast path: a fresh task's message carries its created document and the worker
    # starts it without a read. A scheduled one must not (it would start before run_at).
    now = datetime.now(UTC)
    task = Task(
        task_id=uuid.uuid4().hex,
        tenant_id="acme",
        type="echo",
        status=TaskStatus.SCHEDULED,
        payload={},
        max_attempts=3,
        timeout_s=60,
        created_at=now,
        updated_at=now,
        run_at=now + timedelta(minutes=10),
    )
    assert pipeline.repository.create(task, None).fresh is None
    immediate = task.model_copy(
        update={"task_id": uuid.uuid4().hex, "status": TaskStatus.QUEUED, "run_at": None}
    )
    assert pipeline.repository.create(immediate, None).fresh is not None


def test_a_cancelled_delayed_task_is_never_queued(pipeline: Pipeline) -> None:
    submitted = pipeline.submit.submit("acme", {"type": "echo", "payload": {}, "delay_s": 600})
    assert submitted.run_at is not None
    cancelled = pipeline.submit.cancel("acme", submitted.task_id)
    assert cancelled.status is TaskStatus.CANCELLED
    due = ticker(pipeline, submitted.run_at + timedelta(seconds=1)).tick()
    assert due.tasks_dispatched == 0
    assert pipeline.pull(pipeline.tasks_sub) == []
    view = pipeline.status.get("acme", submitted.task_id)
    assert (view.status, view.run_at) == (TaskStatus.CANCELLED, submitted.run_at)


# -- cron schedules --------------------------------------------------------------------

T0 = datetime(2026, 6, 1, 11, 59, 30, tzinfo=UTC)
SLOT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOURLY = {"cron": "0 * * * *", "timezone": "UTC", "task": {"type": "echo", "payload": {"s": 1}}}


def test_two_tickers_at_once_fire_a_slot_once(pipeline: Pipeline) -> None:
    created = schedule_service(pipeline, T0).create("acme", HOURLY)
    assert created["next_runs"][:2] == ["2026-06-01T12:00:00+00:00", "2026-06-01T13:00:00+00:00"]
    assert len(created["next_runs"]) == 5
    assert ticker(pipeline, SLOT - timedelta(seconds=1)).tick().slots_fired == 0
    barrier = threading.Barrier(2)
    at = SLOT + timedelta(seconds=2)
    results = in_parallel(
        ticker(pipeline, at, schedules=RacingSchedules(pipeline.db, barrier)).tick,
        ticker(pipeline, at, schedules=RacingSchedules(pipeline.db, barrier)).tick,
    )
    # Both may have submitted the slot; the key made it one task, and one advance stood.
    assert sum(r.slots_fired for r in results) == 1
    tasks = tasks_of(pipeline, "acme")
    assert len(tasks) == 1
    assert tasks[0]["status"] == "queued"
    published = pipeline.pull(pipeline.tasks_sub)
    assert {m["data"]["task_id"] for m in published} == {tasks[0]["id"]}
    view = schedule_service(pipeline, at).get("acme", created["schedule_id"])
    assert view["fired"] == 1
    assert view["last_run"] == {"slot": "2026-06-01T12:00:00+00:00", "task_id": tasks[0]["id"]}
    assert view["next_runs"][0] == "2026-06-01T13:00:00+00:00"
    # A late ticker for the same instant finds nothing due.
    assert ticker(pipeline, at + timedelta(seconds=30)).tick().slots_fired == 0
    assert len(tasks_of(pipeline, "acme")) == 1


def test_a_ticker_that_dies_after_submitting_leaves_the_slot_to_fire_once(
    pipeline: Pipeline,
) -> None:
    created = schedule_service(pipeline, T0).create("acme", HOURLY)
    crashing = RacingSchedules(pipeline.db)
    crashing.lose_updates = True
    at = SLOT + timedelta(seconds=1)
    ticker(pipeline, at, schedules=crashing).tick()
    assert len(tasks_of(pipeline, "acme")) == 1  # submitted, but the schedule never advanced
    ticker(pipeline, at + timedelta(seconds=5)).tick()
    tasks = tasks_of(pipeline, "acme")
    assert len(tasks) == 1
    view = schedule_service(pipeline, at).get("acme", created["schedule_id"])
    assert view["fired"] == 1
    assert view["last_run"]["task_id"] == tasks[0]["id"]


def test_skip_overlap_reads_the_previous_runs_real_status(pipeline: Pipeline) -> None:
    body = {**HOURLY, "overlap": "skip"}
    created = schedule_service(pipeline, T0).create("acme", body)
    ticker(pipeline, SLOT + timedelta(seconds=1)).tick()
    # The 12:00 run is still queued at 13:00: that slot is skipped.
    thirteen = ticker(pipeline, SLOT + timedelta(hours=1, seconds=1)).tick()
    assert (thirteen.slots_fired, thirteen.slots_skipped) == (0, 1)
    (first,) = tasks_of(pipeline, "acme")
    done = pipeline.worker.process(TaskMessage(task_id=first["id"], tenant_id="acme"))
    assert done.outcome is Outcome.SUCCEEDED
    fourteen = ticker(pipeline, SLOT + timedelta(hours=2, seconds=1)).tick()
    assert fourteen.slots_fired == 1
    view = schedule_service(pipeline, SLOT).get("acme", created["schedule_id"])
    assert (view["fired"], view["skipped"]) == (2, 1)


def test_schedules_are_tenant_scoped_paused_resumed_and_deleted(pipeline: Pipeline) -> None:
    service = schedule_service(pipeline, T0)
    mine = [service.create("acme", HOURLY)["schedule_id"] for _ in range(3)]
    theirs = service.create("globex", HOURLY)["schedule_id"]
    with pytest.raises(NotFound):
        service.get("acme", theirs)
    with pytest.raises(NotFound):
        service.pause("acme", theirs)
    first = service.list("acme", {"limit": "2"})
    second = service.list("acme", {"limit": "2", "page_token": first["next_page_token"]})
    listed = [s["schedule_id"] for s in first["schedules"] + second["schedules"]]
    assert sorted(listed) == sorted(mine)
    assert "next_page_token" not in second
    paused = service.pause("acme", mine[0])
    assert (paused["state"], paused["next_runs"]) == ("paused", [])
    assert service.pause("acme", mine[0])["state"] == "paused"  # idempotent
    assert ticker(pipeline, SLOT + timedelta(seconds=1)).tick().slots_fired == 3  # not the paused
    # Resumed two hours later: what passed while paused never fires.
    later = schedule_service(pipeline, SLOT + timedelta(hours=2, minutes=5))
    resumed = later.resume("acme", mine[0])
    assert resumed["state"] == "active"
    assert resumed["next_runs"][0] == "2026-06-01T15:00:00+00:00"
    service.delete("acme", mine[1])
    with pytest.raises(NotFound):
        service.get("acme", mine[1])


def test_a_schedules_task_is_validated_as_a_submit_is(pipeline: Pipeline) -> None:
    service = schedule_service(pipeline, T0)
    cases = [
        ({**HOURLY, "task": {"type": "nope", "payload": {}}}, "task.type"),
        ({**HOURLY, "task": {"type": "sleep", "payload": {"seconds": 99}}}, "task.payload.seconds"),
        ({**HOURLY, "task": {"type": "echo", "payload": {}, "delay_s": 5}}, "task.delay_s"),
        (
            {**HOURLY, "task": {"type": "echo", "payload": {}, "max_attempts": 0}},
            "task.max_attempts",
        ),
        ({**HOURLY, "cron": "0 25 * * *"}, "cron"),
        ({**HOURLY, "timezone": "Europe/Atlantis"}, "timezone"),
        ({**HOURLY, "overlap": "sometimes"}, "overlap"),
    ]
    for body, field in cases:
        with pytest.raises(ValidationFailed) as caught:
            service.create("acme", body)
        assert caught.value.field == field, (body, caught.value.detail)
    assert pipeline.db.collection("schedules").count().get()[0][0].value == 0


def test_a_schedules_payload_is_sealed_at_rest(pipeline: Pipeline) -> None:
    secret = "do-not-store-me-plain"
    body = {**HOURLY, "task": {"type": "echo", "payload": {"s": secret}}}
    created = schedule_service(pipeline, T0).create("acme", body)
    raw = pipeline.db.collection("schedules").document(created["schedule_id"]).get().to_dict()
    assert secret.encode() not in bytes(raw["payload"])
    assert secret not in str(raw)
