"""The task pipeline's use cases against the official Firestore and Pub/Sub emulators."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import events, logs, tracing
from shared.errors import (
    Conflict,
    IdempotencyMismatch,
    IntegrityError,
    KeyUnavailable,
    NestingTooDeep,
    NotFound,
    PayloadTooLarge,
    StartDeferred,
    TaskFailure,
    ValidationFailed,
)
from shared.operations import metrics
from shared.operations.redispatch import Redispatcher
from shared.security.crypto import TaskOpener, TaskSealer
from shared.security.keyring import rotate_keyring
from shared.security.rotation import rewrap_all
from shared.tasks.diagnostic import read_probe, release_probe
from shared.tasks.dispatch import PubSubTaskPublisher
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.registry import BUILTIN_MODULES, load_registry
from shared.tasks.repository import FirestoreTaskRepository
from shared.tasks.runner import ProcessRunner
from shared.tasks.worker import Outcome, Worker, WorkerPolicy

from .conftest import PROJECT, Pipeline

pytestmark = pytest.mark.integration


def submit(p: Pipeline, body: dict[str, Any], tenant: str = "acme", key: str | None = None) -> str:
    return p.submit.submit(tenant, body, key).task_id


def message(task_id: str, tenant: str = "acme") -> TaskMessage:
    return TaskMessage(task_id=task_id, tenant_id=tenant)


def raw(p: Pipeline, task_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = p.db.collection("tasks").document(task_id).get().to_dict()
    return doc


def marker() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def until(probe: Callable[[], Any], *, timeout_s: float = 30.0) -> Any:
    """Poll until `probe()` is truthy (a wait for an event, not an assertion on speed)."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
    return value


def expire_lease(p: Pipeline, task_id: str) -> None:
    """What a dead or frozen worker leaves behind: a running task whose lease has run out."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    p.db.collection("tasks").document(task_id).update({"lease_until": past})


class Delivery(threading.Thread):
    """One delivery on its own thread; `outcome` is its Processed or the exception it raised."""

    def __init__(self, worker: Worker, task_id: str) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.task_id = task_id
        self.outcome: Any = None

    def run(self) -> None:
        try:
            self.outcome = self.worker.process(message(self.task_id))
        except Exception as exc:  # the test asserts on every delivery's outcome
            self.outcome = exc

    def result(self) -> Any:
        self.join(60)
        assert not self.is_alive(), "delivery did not finish"
        return self.outcome


def test_submit_stores_sealed_task_and_publishes_only_ids(pipeline: Pipeline) -> None:
    secret = "the quick brown fox 4242"
    task_id = submit(pipeline, {"type": "echo", "payload": {"note": secret}})

    raw = pipeline.db.collection("tasks").document(task_id).get().to_dict()
    assert raw["status"] == "queued"
    assert raw["tenant_id"] == "acme"
    assert isinstance(raw["payload"], bytes)
    assert secret.encode() not in raw["payload"]
    assert secret not in json.dumps(raw, default=repr)

    published = pipeline.pull(pipeline.tasks_sub)
    assert len(published) == 1
    data = published[0]["data"]
    assert (data["task_id"], data["tenant_id"]) == (task_id, "acme")
    assert published[0]["attributes"]["type"] == "echo"
    # The fresh task's document travels as stored: sealed, never the plaintext payload.
    created = data["created"]
    assert base64.b64decode(created["payload"]) == raw["payload"]
    assert base64.b64decode(created["data_key"]) == raw["data_key"]
    assert secret not in json.dumps(data)

    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.QUEUED
    assert view.attempts == 0
    assert view.max_attempts == 3


def test_a_successful_delivery_logs_one_line_naming_its_task(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "_configured", True)  # keep caplog's handler on the root
    task_id = submit(pipeline, {"type": "echo", "payload": {"n": 1}})
    data = message(task_id).model_dump_json().encode()
    envelope = {"message": {"data": base64.b64encode(data).decode(), "messageId": "m1"}}
    with caplog.at_level(logging.INFO, logger="aia"):
        events.handle(envelope, pipeline.worker.process)
    lines = [r for r in caplog.records if r.name.startswith("aia")]
    assert [r.getMessage() for r in lines] == ["delivery handled"]
    fields = vars(lines[0])
    assert fields["outcome"] == "succeeded"
    assert (fields["task_id"], fields["tenant_id"]) == (task_id, "acme")
    assert fields["duration_s"] > 0


def test_echo_runs_once_even_when_delivered_twice(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {"n": 1, "s": "x"}})
    first = pipeline.worker.process(message(task_id))
    second = pipeline.worker.process(message(task_id))

    assert first.outcome is Outcome.SUCCEEDED
    assert second.outcome is Outcome.SKIPPED
    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.result == {"n": 1, "s": "x"}
    assert view.attempts == 1
    raw = pipeline.db.collection("tasks").document(task_id).get().to_dict()
    assert b'"s"' not in raw["result"]
    assert raw["finished_at"] is not None


def test_a_handler_is_given_its_attempts_place_in_the_submit_trace(pipeline: Pipeline) -> None:
    trace_id = uuid.uuid4().hex
    with tracing.span("POST submit_task", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"):
        task_id = submit(pipeline, {"type": "test.traceparent", "payload": {}})
    assert pipeline.status.get("acme", task_id).trace_id == trace_id
    with tracing.span("process", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"):
        assert pipeline.worker.process(message(task_id)).outcome is Outcome.SUCCEEDED
    handed = pipeline.status.get("acme", task_id).result
    assert tracing.trace_id_of(handed) == trace_id


def test_concurrent_deliveries_run_the_handler_once(pipeline: Pipeline) -> None:
    probe = marker()
    task_id = submit(pipeline, {"type": "probe", "payload": {"marker": probe, "hold_attempts": 1}})
    holder = Delivery(pipeline.worker, task_id)
    holder.start()
    # The handler is running and held at its barrier: every other delivery overlaps it.
    until(lambda: read_probe(probe)["attempts"] == [1])
    others = [Delivery(pipeline.worker, task_id) for _ in range(3)]
    for delivery in others:
        delivery.start()
    busy = [d.result() for d in others]
    release_probe(probe)

    assert holder.result().outcome is Outcome.SUCCEEDED
    # Busy duplicates are acknowledged (not nacked towards Pub/Sub's dead-letter policy).
    assert [(b.outcome, b.detail) for b in busy] == [(Outcome.SKIPPED, "busy")] * 3
    assert read_probe(probe)["attempts"] == [1]
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.SUCCEEDED, 1)


def test_retryable_failure_is_retried_then_succeeds(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "fail", "payload": {"times": 1}})
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(task_id))
    between = pipeline.status.get("acme", task_id)
    assert between.status is TaskStatus.QUEUED
    assert between.attempts == 1

    assert pipeline.worker.process(message(task_id)).outcome is Outcome.SUCCEEDED
    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.attempts == 2
    assert view.result == {"succeeded_on_attempt": 2}


def test_always_failing_task_fails_after_max_attempts_and_is_dead_lettered(
    pipeline: Pipeline,
) -> None:
    task_id = submit(pipeline, {"type": "fail", "payload": {"times": 10}, "max_attempts": 2})
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(task_id))
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED

    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.FAILED
    assert view.attempts == 2
    assert view.error is not None
    assert "attempt 2" in view.error.message
    dead = pipeline.pull(pipeline.dead_letter_sub)
    assert [m["data"]["task_id"] for m in dead] == [task_id]
    assert dead[0]["attributes"]["reason"] == "task-failed"
    # A late duplicate of a failed task is acknowledged without running.
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.SKIPPED


def test_non_retryable_failure_fails_at_once(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "fail", "payload": {"times": 5, "retryable": False}})
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 1)


def test_handler_timeout_is_a_retryable_failure(pipeline: Pipeline) -> None:
    task_id = submit(
        pipeline, {"type": "sleep", "payload": {"seconds": 30}, "timeout_s": 1, "max_attempts": 2}
    )
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(task_id))
    between = raw(pipeline, task_id)
    assert (between["status"], between["attempts"], between["error_code"]) == (
        "queued",
        1,
        "timeout",
    )
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 2)
    assert view.error is not None
    assert view.error.code == "timeout"


def test_a_handler_that_ignores_its_deadline_is_stopped_before_its_retry(
    pipeline: Pipeline,
) -> None:
    probe = marker()
    body = {
        "type": "probe",
        "payload": {"marker": probe, "seconds": 60, "honour_cancel": False},
        "timeout_s": 1,
        "max_attempts": 2,
    }
    task_id = submit(pipeline, body)
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(task_id))
    first = read_probe(probe)
    assert first["attempts"] == [1]
    # The attempt is over only once its process is: the retry may start at once.
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    recorded = read_probe(probe)
    assert recorded["attempts"] == [1, 2]
    assert recorded["overlaps"] == []
    assert raw(pipeline, task_id)["error_code"] == "timeout"


def test_lease_expired_on_the_last_attempt_fails_and_dead_letters_through_the_worker(
    pipeline: Pipeline,
) -> None:
    probe = marker()
    body = {"type": "probe", "payload": {"marker": probe, "hold_attempts": 1}, "max_attempts": 1}
    task_id = submit(pipeline, body)
    holder = Delivery(pipeline.worker, task_id)
    holder.start()
    until(lambda: read_probe(probe)["attempts"] == [1])
    busy = pipeline.worker.process(message(task_id))
    assert (busy.outcome, busy.detail) == (Outcome.SKIPPED, "busy")
    expire_lease(pipeline, task_id)  # as if its worker had died
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    release_probe(probe)
    # The held attempt finishes late: its result is dropped, the failure stands.
    late = holder.result()
    assert (late.outcome, late.detail) == (Outcome.SKIPPED, "lease lost")
    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "lease-expired"
    dead = pipeline.pull(pipeline.dead_letter_sub)
    assert [(m["data"]["task_id"], m["attributes"]["reason"]) for m in dead] == [
        (task_id, "lease-expired")
    ]
    assert raw(pipeline, task_id)["dead_letter_pending"] is False


def test_late_result_of_a_reclaimed_attempt_is_dropped_and_the_new_one_stands(
    pipeline: Pipeline,
) -> None:
    probe = marker()
    body = {"type": "probe", "payload": {"marker": probe, "hold_attempts": 1}, "max_attempts": 2}
    task_id = submit(pipeline, body)
    slow = Delivery(pipeline.worker, task_id)
    slow.start()
    until(lambda: read_probe(probe)["attempts"] == [1])
    expire_lease(pipeline, task_id)
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.SUCCEEDED
    release_probe(probe)
    late = slow.result()
    assert (late.outcome, late.detail) == (Outcome.SKIPPED, "lease lost")
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.SUCCEEDED, 2)
    assert view.result is not None
    assert view.result["attempt"] == 2


def test_message_for_other_tenant_or_unknown_task_is_skipped(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {}})
    assert pipeline.worker.process(message(task_id, "intruder")).outcome is Outcome.SKIPPED
    assert pipeline.worker.process(message("0" * 32)).outcome is Outcome.SKIPPED
    assert pipeline.status.get("acme", task_id).status is TaskStatus.QUEUED


def test_idempotency_replays_and_rejects_a_changed_body(pipeline: Pipeline) -> None:
    body = {"type": "echo", "payload": {"a": 1}}
    first = pipeline.submit.submit("acme", body, "key-1")
    again = pipeline.submit.submit("acme", {"payload": {"a": 1}, "type": "echo"}, "key-1")
    assert (again.task_id, again.replayed) == (first.task_id, True)
    with pytest.raises(IdempotencyMismatch):
        pipeline.submit.submit("acme", {"type": "echo", "payload": {"a": 2}}, "key-1")
    # The same key is another tenant's own business.
    other = pipeline.submit.submit("globex", body, "key-1")
    assert other.task_id != first.task_id
    assert not other.replayed
    assert len(pipeline.pull(pipeline.tasks_sub)) == 2
    stored = pipeline.db.collection("idempotency_keys").get()
    assert all("key-1" not in json.dumps(d.to_dict(), default=repr) for d in stored)


def test_concurrent_submits_with_one_key_make_one_task(pipeline: Pipeline) -> None:
    body = {"type": "echo", "payload": {"once": True}}
    results: list[Any] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        try:
            results.append(pipeline.submit.submit("acme", body, "same-key"))
        except Exception as exc:  # every thread's outcome is asserted below
            results.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 8
    assert all(not isinstance(r, Exception) for r in results), results
    assert len({r.task_id for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    assert len(pipeline.db.collection("tasks").get()) == 1


def test_an_idempotency_key_past_its_window_makes_a_new_task(pipeline: Pipeline) -> None:
    body = {"type": "echo", "payload": {}}
    first = pipeline.submit.submit("acme", body, "old-key")
    for record in pipeline.db.collection("idempotency_keys").get():
        # TTL deletion lags by up to a day: the record is still there, but expired.
        record.reference.update({"expires_at": datetime.now(UTC) - timedelta(seconds=1)})
    second = pipeline.submit.submit("acme", body, "old-key")
    assert second.task_id != first.task_id
    assert not second.replayed
    again = pipeline.submit.submit("acme", body, "old-key")
    assert (again.task_id, again.replayed) == (second.task_id, True)


def test_tenants_never_see_each_other(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {}}, tenant="acme")
    with pytest.raises(NotFound):
        pipeline.status.get("globex", task_id)
    page = pipeline.status.list("globex", {})
    assert page.tasks == []
    with pytest.raises(NotFound):
        pipeline.status.get("acme", "../tasks")


def test_listing_is_newest_first_and_paginates_without_gaps(pipeline: Pipeline) -> None:
    ids = [submit(pipeline, {"type": "echo", "payload": {"i": i}}) for i in range(23)]
    ids += [submit(pipeline, {"type": "sleep", "payload": {"seconds": 0}}) for _ in range(2)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"limit": "10", **({"page_token": token} if token else {})}
        page = pipeline.status.list("acme", params)
        seen += [t.task_id for t in page.tasks]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    created = [pipeline.status.get("acme", t).created_at for t in seen]
    assert created == sorted(created, reverse=True)

    sleeps = pipeline.status.list("acme", {"type": "sleep"})
    assert {t.task_id for t in sleeps.tasks} == set(ids[-2:])
    pipeline.worker.process(message(ids[0]))
    done = pipeline.status.list("acme", {"status": "succeeded", "type": "echo"})
    assert [t.task_id for t in done.tasks] == [ids[0]]
    assert done.tasks[0].result == {"i": 0}
    with pytest.raises(ValidationFailed):
        pipeline.status.list("acme", {"status": "pending"})


def broken_publisher(p: Pipeline) -> PubSubTaskPublisher:
    return PubSubTaskPublisher(
        p.publisher._client,
        f"projects/{PROJECT}/topics/missing-topic",
        f"projects/{PROJECT}/topics/missing-dl",
    )


def test_failed_publish_is_flagged_replayed_as_deferred_and_redispatched(
    pipeline: Pipeline,
) -> None:
    from shared.config import Settings
    from shared.tasks.submission import SubmitService

    service = SubmitService(
        pipeline.repository,
        broken_publisher(pipeline),
        pipeline.registry,
        TaskSealer(pipeline.ring),
        Settings(project=PROJECT),
    )
    submitted = service.submit("acme", {"type": "echo", "payload": {}}, "deferred-key")
    assert not submitted.dispatched
    assert raw(pipeline, submitted.task_id)["dispatch_pending"] is True
    # The idempotent replay tells the same truth: the dispatch is still deferred.
    replay = service.submit("acme", {"type": "echo", "payload": {}}, "deferred-key")
    assert (replay.task_id, replay.replayed, replay.dispatched) == (
        submitted.task_id,
        True,
        False,
    )

    swept = Redispatcher(
        pipeline.repository, pipeline.publisher, after=timedelta(minutes=5)
    ).sweep()
    assert (swept.found, swept.published) == (1, 1)
    assert [m["data"]["task_id"] for m in pipeline.pull(pipeline.tasks_sub)] == [submitted.task_id]
    # Picked up once: the next sweep leaves it alone until it is stale again.
    again = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(minutes=5))
    assert again.sweep().found == 0


def test_redispatch_republishes_stale_and_expired_but_not_tasks_in_backoff(
    pipeline: Pipeline,
) -> None:
    stale = submit(pipeline, {"type": "echo", "payload": {}})
    running = submit(pipeline, {"type": "probe", "payload": {"marker": marker()}})
    in_backoff = submit(pipeline, {"type": "fail", "payload": {"times": 1}})
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(in_backoff))  # queued again, awaiting Pub/Sub's retry
    tasks = pipeline.db.collection("tasks")
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    tasks.document(stale).update({"updated_at": long_ago})
    tasks.document(running).update(
        {"status": "running", "attempts": 1, "lease_id": "dead", "lease_until": long_ago}
    )
    pipeline.pull(pipeline.tasks_sub)

    sweep = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(minutes=15))
    swept = sweep.sweep()
    assert (swept.found, swept.published) == (2, 2)
    assert {m["data"]["task_id"] for m in pipeline.pull(pipeline.tasks_sub)} == {stale, running}
    # The expired lease is released, so the task is not republished every sweep
    # while its new message is on its way; a new delivery claims attempt 2.
    released = raw(pipeline, running)
    assert (released["status"], released["lease_id"], released["attempts"]) == ("queued", None, 1)
    assert sweep.sweep().found == 0
    assert pipeline.worker.process(message(running)).outcome is Outcome.SUCCEEDED
    assert pipeline.status.get("acme", running).attempts == 2


def test_a_lost_dead_letter_is_sent_by_the_sweep_exactly_once(pipeline: Pipeline) -> None:
    worker = Worker(
        pipeline.repository, pipeline.registry, broken_publisher(pipeline), pipeline.runner
    )
    task_id = submit(pipeline, {"type": "fail", "payload": {"times": 5, "retryable": False}})
    assert worker.process(message(task_id)).outcome is Outcome.FAILED
    assert raw(pipeline, task_id)["dead_letter_pending"] is True
    sweep = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(minutes=15))
    # Within its grace the worker is presumed to be sending it itself.
    assert sweep.sweep().dead_lettered == 0
    pipeline.db.collection("tasks").document(task_id).update(
        {"updated_at": datetime.now(UTC) - timedelta(minutes=5)}
    )
    assert sweep.sweep().dead_lettered == 1
    dead = pipeline.pull(pipeline.dead_letter_sub)
    assert [m["data"]["task_id"] for m in dead] == [task_id]
    assert raw(pipeline, task_id)["dead_letter_pending"] is False
    assert sweep.sweep().dead_lettered == 0
    assert pipeline.pull(pipeline.dead_letter_sub) == []


def test_metrics_count_submissions_and_durations(pipeline: Pipeline) -> None:
    for _ in range(3):
        task_id = submit(pipeline, {"type": "echo", "payload": {}})
    pipeline.worker.process(message(task_id))
    snapshot = metrics.collect(pipeline.db, ["echo", "sleep"])
    figures = metrics.render_json(snapshot)
    assert figures["aia_tasks_submitted_total"] == {"echo": 3, "sleep": 0}
    assert figures["aia_task_duration_seconds"]["echo"]["count"] == 1
    exposition = metrics.render_prometheus(snapshot).decode()
    assert 'aia_tasks_submitted_total{type="echo"} 3.0' in exposition
    assert 'aia_task_duration_seconds_count{type="echo"} 1.0' in exposition
    assert 'aia_tasks{status="queued",type="echo"} 2.0' in exposition
    assert 'aia_tasks_finished_total{status="succeeded",type="echo"} 1.0' in exposition
    assert 'aia_tasks{status="succeeded"' not in exposition  # history is never aggregated


def test_rotation_rewraps_data_keys_and_old_data_stays_readable(pipeline: Pipeline) -> None:
    ids = [submit(pipeline, {"type": "echo", "payload": {"i": i}}) for i in range(7)]
    pipeline.worker.process(message(ids[0]))
    old_key = pipeline.ring.current_key_id
    rotated = rotate_keyring(pipeline.ring)
    documents = TaskDocuments(TaskSealer(rotated), TaskOpener(rotated), retention=timedelta(days=1))
    repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)

    first = rewrap_all(repository, batch_size=3)
    assert (first.scanned, first.rewrapped) == (7, 7)
    assert rewrap_all(repository, batch_size=3).rewrapped == 0
    raw = pipeline.db.collection("tasks").document(ids[0]).get().to_dict()
    assert old_key.encode() not in raw["data_key"]
    assert rotated.current_key_id.encode() in raw["data_key"]
    assert repository.get("acme", ids[0]).result == {"i": 0}

    # Interrupted after one batch, then resumed from the printed cursor.
    twice = rotate_keyring(rotated)
    documents = TaskDocuments(TaskSealer(twice), TaskOpener(twice), retention=timedelta(days=1))
    repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)
    page = repository.rewrap_batch(None, 3)
    assert (page.scanned, page.rewrapped) == (3, 3)
    rest = rewrap_all(repository, batch_size=3, start_after=page.last_id)
    assert (rest.scanned, rest.rewrapped) == (4, 4)
    assert rewrap_all(repository).rewrapped == 0

    # A tampered key is reported and skipped; the rest still rotate.
    ref = pipeline.db.collection("tasks").document(ids[3])
    tampered = bytearray(ref.get().to_dict()["data_key"])
    tampered[-1] ^= 1
    ref.update({"data_key": bytes(tampered)})
    thrice = rotate_keyring(twice)
    documents = TaskDocuments(TaskSealer(thrice), TaskOpener(thrice), retention=timedelta(days=1))
    repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)
    report = rewrap_all(repository, batch_size=3)
    assert (report.rewrapped, report.unreadable) == (6, [(ids[3], "integrity")])

    # A key no longer in the ring is reported too, instead of stopping the rotation.
    ref = pipeline.db.collection("tasks").document(ids[5])
    unknown = bytearray(ref.get().to_dict()["data_key"])
    at = unknown.index(thrice.current_key_id.encode())
    # Its last character changed to another digit: still a valid id, not in the ring (a
    # bit flip could make a character no id has, which is an integrity failure instead).
    last = at + len(thrice.current_key_id) - 1
    unknown[last] = ord("1") if unknown[last] == ord("0") else ord("0")
    ref.update({"data_key": bytes(unknown)})
    fourth = rotate_keyring(thrice)
    documents = TaskDocuments(TaskSealer(fourth), TaskOpener(fourth), retention=timedelta(days=1))
    repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)
    report = rewrap_all(repository, batch_size=3)
    assert sorted(report.unreadable) == sorted([(ids[3], "integrity"), (ids[5], "key-unavailable")])
    assert report.rewrapped == 5


def test_tampered_task_fails_plainly_and_is_dead_lettered(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {"secret": 1}})
    other = submit(pipeline, {"type": "echo", "payload": {"other": 2}}, tenant="globex")
    tasks = pipeline.db.collection("tasks")
    # Swap in another task's sealed payload: it must not open under this task's key.
    tasks.document(task_id).update({"payload": tasks.document(other).get().to_dict()["payload"]})

    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 0)
    assert view.error is not None
    assert view.error.code == "integrity"
    dead = pipeline.pull(pipeline.dead_letter_sub)
    assert [(m["data"]["task_id"], m["attributes"]["reason"]) for m in dead] == [
        (task_id, "integrity")
    ]
    # The other task is untouched and still runs.
    assert pipeline.worker.process(message(other, "globex")).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize(
    ("field", "value"), [("type", "sleep"), ("max_attempts", 10), ("timeout_s", 540)]
)
def test_control_fields_are_bound_to_the_sealed_payload(
    pipeline: Pipeline, field: str, value: Any
) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {"seconds": 1}})
    # A database writer steers the sealed payload elsewhere: it no longer opens.
    pipeline.db.collection("tasks").document(task_id).update({field: value})
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    stored = raw(pipeline, task_id)
    assert (stored["status"], stored["error_code"], stored["attempts"]) == (
        "failed",
        "integrity",
        0,
    )
    assert [m["data"]["task_id"] for m in pipeline.pull(pipeline.dead_letter_sub)] == [task_id]


def test_tampered_result_is_an_error_not_garbage(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {"v": 1}})
    pipeline.worker.process(message(task_id))
    ref = pipeline.db.collection("tasks").document(task_id)
    blob = bytearray(ref.get().to_dict()["result"])
    blob[len(blob) // 2] ^= 0x40
    ref.update({"result": bytes(blob)})
    with pytest.raises(IntegrityError):
        pipeline.status.get("acme", task_id)


def test_a_payload_too_large_to_store_is_refused_before_writing(pipeline: Pipeline) -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        submit(pipeline, {"type": "echo", "payload": {"blob": "x" * (1024 * 1024 - 4096)}})
    assert caught.value.field == "payload"
    assert pipeline.db.collection("tasks").get() == []


def test_a_result_too_large_to_store_fails_the_task_at_once(pipeline: Pipeline) -> None:
    big = submit(pipeline, {"type": "test.inflate", "payload": {"n": 1024 * 1024}})
    assert pipeline.worker.process(message(big)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", big)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 1)
    assert view.error is not None
    assert view.error.code == "result-too-large"
    small = submit(pipeline, {"type": "test.inflate", "payload": {"n": 10}})
    assert pipeline.worker.process(message(small)).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize(
    ("task_type", "payload"), [("test.nested", {"n": 300}), ("test.not-json", {})]
)
def test_a_result_that_cannot_be_stored_fails_at_once_and_reads_stay_healthy(
    pipeline: Pipeline, task_type: str, payload: dict[str, Any]
) -> None:
    task_id = submit(pipeline, {"type": task_type, "payload": payload})
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 1)
    assert view.error is not None
    assert view.error.code == "result-invalid"
    assert pipeline.status.list("acme", {}).tasks[0].to_json()["status"] == "failed"


def test_a_result_at_the_depth_limit_is_stored_and_read_back(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "test.nested", "payload": {"n": 63}})
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.SUCCEEDED
    view = pipeline.status.get("acme", task_id).to_json()
    depth, value = 0, view["result"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0] if value else None
    assert depth == 64
    assert json.dumps(pipeline.status.list("acme", {}).tasks[0].to_json())


def test_a_payload_nested_too_deeply_is_refused_at_submit(pipeline: Pipeline) -> None:
    payload: Any = {}
    for _ in range(300):
        payload = {"a": payload}
    with pytest.raises(NestingTooDeep) as caught:
        submit(pipeline, {"type": "echo", "payload": payload})
    assert caught.value.status == 400
    assert "64" in caught.value.detail
    assert pipeline.db.collection("tasks").get() == []


def test_a_deterministic_error_the_type_declares_is_not_retried(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "test.deterministic", "payload": {}, "max_attempts": 5})
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 1)
    assert view.error is not None
    assert view.error.message.startswith("ZeroDivisionError")


def test_a_crashed_handler_process_is_a_retried_attempt(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "test.crash", "payload": {}, "max_attempts": 2})
    with pytest.raises(TaskFailure):
        pipeline.worker.process(message(task_id))
    assert raw(pipeline, task_id)["error_code"] == "handler-crashed"
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    # The pool replaced the dead process: other tasks still run.
    echo = submit(pipeline, {"type": "echo", "payload": {"still": "fine"}})
    assert pipeline.worker.process(message(echo)).outcome is Outcome.SUCCEEDED


def test_a_ring_missing_the_data_key_is_retried_then_failed_after_the_grace(
    pipeline: Pipeline,
) -> None:
    # Mid-rotation deploy: submit already has the new ring, this worker the old one.
    newer = rotate_keyring(pipeline.ring)
    documents = TaskDocuments(TaskSealer(newer), TaskOpener(newer), retention=timedelta(days=1))
    new_repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)
    from shared.config import Settings
    from shared.tasks.submission import SubmitService

    new_submit = SubmitService(
        new_repository,
        pipeline.publisher,
        pipeline.registry,
        TaskSealer(newer),
        Settings(project=PROJECT),
    )
    soon = new_submit.submit("acme", {"type": "echo", "payload": {"v": 1}}).task_id
    with pytest.raises(KeyUnavailable):
        pipeline.worker.process(message(soon))
    assert pipeline.status.get("acme", soon).status is TaskStatus.QUEUED
    assert raw(pipeline, soon)["key_wait_since"] is not None
    # Once the new ring reaches the worker the task runs normally.
    assert pipeline.worker_with(new_repository).process(message(soon)).outcome is Outcome.SUCCEEDED

    # A key that never arrives: after the grace the task fails instead of looping.
    never = new_submit.submit("acme", {"type": "echo", "payload": {"v": 2}}).task_id
    strict = pipeline.worker_with(pipeline.repository, WorkerPolicy(key_grace=timedelta(hours=1)))
    with pytest.raises(KeyUnavailable):
        strict.process(message(never))
    waiting = pipeline.db.collection("tasks").document(never)
    waiting.update({"key_wait_since": datetime.now(UTC) - timedelta(hours=2)})
    assert strict.process(message(never)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", never)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "key-unavailable"
    assert [m["data"]["task_id"] for m in pipeline.pull(pipeline.dead_letter_sub)] == [never]


def test_an_undecodable_task_fails_after_a_bounded_number_of_deliveries(
    pipeline: Pipeline,
) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {}})
    pipeline.db.collection("tasks").document(task_id).update({"data_key": "not bytes"})
    policy = WorkerPolicy(max_start_failures=3)
    worker = pipeline.worker_with(pipeline.repository, policy)
    for _ in range(2):
        with pytest.raises(StartDeferred):
            worker.process(message(task_id))
    assert worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "undeliverable"
    assert [m["data"]["task_id"] for m in pipeline.pull(pipeline.dead_letter_sub)] == [task_id]
    assert worker.process(message(task_id)).outcome is Outcome.SKIPPED


def test_a_type_this_worker_lacks_is_retried_a_bounded_number_of_times(pipeline: Pipeline) -> None:
    # A rolling deploy: submit knows test.inflate, this worker only the built-in types.
    task_id = submit(pipeline, {"type": "test.inflate", "payload": {"n": 1}})
    older = Worker(
        pipeline.repository,
        load_registry(BUILTIN_MODULES),
        pipeline.publisher,
        ProcessRunner(BUILTIN_MODULES),
        policy=WorkerPolicy(max_start_failures=2),
    )
    with pytest.raises(StartDeferred):
        older.process(message(task_id))
    assert raw(pipeline, task_id)["attempts"] == 0
    assert older.process(message(task_id)).outcome is Outcome.FAILED
    error = pipeline.status.get("acme", task_id).error
    assert error is not None
    assert error.code == "undeliverable"
    assert "test.inflate" in error.message


def test_handler_error_text_stays_out_of_the_logs(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    card = "4111-1111-1111-1111"
    task_id = submit(
        pipeline, {"type": "test.charge", "payload": {"card": card}, "max_attempts": 2}
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TaskFailure) as caught:
            pipeline.worker.process(message(task_id))
        assert card not in str(caught.value)
        assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    logged = "\n".join(f"{r.getMessage()} {r.__dict__} {r.exc_text or ''}" for r in caplog.records)
    assert card not in logged
    error = pipeline.status.get("acme", task_id).error
    assert error is not None
    assert card in error.message  # the client still reads why it failed


def test_a_queued_task_cancelled_never_starts(pipeline: Pipeline) -> None:
    probe = marker()
    task_id = submit(pipeline, {"type": "probe", "payload": {"marker": probe}})
    with pytest.raises(NotFound):
        pipeline.submit.cancel("globex", task_id)  # another tenant's is nobody's
    cancelled = pipeline.submit.cancel("acme", task_id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert pipeline.submit.cancel("acme", task_id).status is TaskStatus.CANCELLED  # idempotent
    outcome = pipeline.worker.process(message(task_id))
    assert (outcome.outcome, outcome.detail) == (Outcome.SKIPPED, "terminal")
    assert read_probe(probe)["attempts"] == []
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.CANCELLED, 0)
    assert pipeline.pull(pipeline.dead_letter_sub) == []


def test_a_running_task_sees_cancelled_and_its_late_result_is_discarded(
    pipeline: Pipeline,
) -> None:
    probe = marker()
    body = {"type": "probe", "payload": {"marker": probe, "hold_attempts": 1}}
    task_id = submit(pipeline, body)
    running = Delivery(pipeline.worker, task_id)
    running.start()
    until(lambda: read_probe(probe)["attempts"] == [1])
    asked = pipeline.submit.cancel("acme", task_id)
    assert (asked.status, asked.cancel_requested) == (TaskStatus.RUNNING, True)
    # The well-behaved handler stops on ctx.cancelled (it would otherwise hold forever).
    assert running.result().outcome is Outcome.CANCELLED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.attempts) == (TaskStatus.CANCELLED, 1)
    assert view.result is None
    assert pipeline.pull(pipeline.dead_letter_sub) == []
    with pytest.raises(Conflict):
        pipeline.submit.cancel("acme", submit_and_run(pipeline))


def test_a_handler_ignoring_cancellation_is_stopped_at_its_deadline(pipeline: Pipeline) -> None:
    probe = marker()
    body = {
        "type": "probe",
        "payload": {"marker": probe, "seconds": 60, "honour_cancel": False},
        "timeout_s": 2,
    }
    task_id = submit(pipeline, body)
    running = Delivery(pipeline.worker, task_id)
    running.start()
    until(lambda: read_probe(probe)["attempts"] == [1])
    pipeline.submit.cancel("acme", task_id)
    assert running.result().outcome is Outcome.CANCELLED
    assert pipeline.status.get("acme", task_id).status is TaskStatus.CANCELLED
    _, _, pid = read_probe(probe)["starts"][0]
    assert not _alive(pid)


def test_a_result_that_lands_as_the_cancel_arrives_is_discarded(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {"v": 1}})
    opened = pipeline.repository.load("acme", task_id)
    now = datetime.now(UTC)
    lease = pipeline.repository.take_lease(opened, now, now + timedelta(minutes=1))
    assert lease is not None
    pipeline.submit.cancel("acme", task_id)  # between the handler's return and the write
    stored = pipeline.repository.finish(
        lease, status=TaskStatus.SUCCEEDED, result={"v": 1}, duration_s=0.01, until=time.time() + 30
    )
    assert stored is TaskStatus.CANCELLED
    view = pipeline.status.get("acme", task_id)
    assert (view.status, view.result) == (TaskStatus.CANCELLED, None)


def test_progress_is_stored_coalesced_and_shown_in_the_view(pipeline: Pipeline) -> None:
    probe = marker()
    body = {
        "type": "probe",
        "payload": {"marker": probe, "seconds": 2.5, "progress_reports": 5000},
    }
    task_id = submit(pipeline, body)
    running = Delivery(pipeline.worker, task_id)
    running.start()
    seen = until(lambda: pipeline.status.get("acme", task_id).progress)
    assert 0 < seen.fraction <= 1
    assert seen.message is not None
    assert seen.message.startswith("step ")
    assert running.result().outcome is Outcome.SUCCEEDED
    final = pipeline.status.get("acme", task_id).to_json()
    assert final["progress"]["fraction"] == 1.0
    assert final["progress"]["metadata"] == {"step": 5000}
    # Sealed like the payload: a database reader learns nothing from it.
    assert b"step" not in raw(pipeline, task_id)["progress"]


def submit_and_run(p: Pipeline) -> str:
    task_id = submit(p, {"type": "echo", "payload": {}})
    assert p.worker.process(message(task_id)).outcome is Outcome.SUCCEEDED
    return task_id


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class CountingReads(FirestoreTaskRepository):
    """The real repository, counting the task documents it reads."""

    reads = 0

    def _read(self, task_id: str, deadline: Any) -> Any:
        type(self).reads += 1
        return super()._read(task_id, deadline)


def counting(p: Pipeline) -> tuple[Worker, type[CountingReads]]:
    documents = TaskDocuments(TaskSealer(p.ring), TaskOpener(p.ring), retention=timedelta(days=1))
    repository = CountingReads(p.db, documents, metric_shards=4)
    CountingReads.reads = 0
    return p.worker_with(repository), CountingReads


def published(p: Pipeline) -> dict[str, TaskMessage]:
    """Every message waiting on the tasks topic, by task id."""
    return {
        m["data"]["task_id"]: TaskMessage.model_validate(m["data"]) for m in p.pull(p.tasks_sub)
    }


def test_a_fresh_tasks_first_delivery_reads_nothing(pipeline: Pipeline) -> None:
    worker, reads = counting(pipeline)
    task_id = submit(pipeline, {"type": "echo", "payload": {"fast": True}})
    delivered = published(pipeline)[task_id]
    assert delivered.created is not None
    assert worker.process(delivered).outcome is Outcome.SUCCEEDED
    assert reads.reads == 0
    assert pipeline.status.get("acme", task_id).result == {"fast": True}
    # A duplicate of the same message finds the document changed: it reads, and skips.
    assert worker.process(delivered).outcome is Outcome.SKIPPED
    assert reads.reads >= 1


def test_a_message_describing_another_document_falls_back_to_the_stored_one(
    pipeline: Pipeline,
) -> None:
    worker, reads = counting(pipeline)
    real = submit(pipeline, {"type": "echo", "payload": {"mine": 1}})
    other = submit(pipeline, {"type": "echo", "payload": {"forged": 2}})
    messages = published(pipeline)
    genuine, forged_from = messages[real], messages[other]
    assert genuine.created is not None
    assert forged_from.created is not None
    # Another task's sealed payload does not open under this task's key: the stored one runs.
    forged = genuine.model_copy(
        update={
            "created": genuine.created.model_copy(update={"payload": forged_from.created.payload})
        }
    )
    assert worker.process(forged).outcome is Outcome.SUCCEEDED
    assert reads.reads >= 1
    assert pipeline.status.get("acme", real).result == {"mine": 1}
    # A stale description (the task was cancelled since) loses its conditional write.
    cancelled = submit(pipeline, {"type": "echo", "payload": {}})
    stale = published(pipeline)[cancelled]
    pipeline.submit.cancel("acme", cancelled)
    assert worker.process(stale).outcome is Outcome.SKIPPED
    assert pipeline.status.get("acme", cancelled).status is TaskStatus.CANCELLED


# --- fan-out and fan-in ---------------------------------------------------------------


def drain(p: Pipeline, *, rounds: int = 20) -> int:
    """Deliver whatever the tasks topic holds, until it is empty; how many were delivered."""
    delivered = 0
    for _ in range(rounds):
        waiting = p.pull(p.tasks_sub, max_messages=1000)
        if not waiting:
            return delivered
        for m in waiting:
            with contextlib.suppress(TaskFailure):
                p.worker.process(TaskMessage.model_validate(m["data"]))
            delivered += 1
    raise AssertionError("the topic never drained")


def test_a_fan_out_runs_its_children_then_the_continuation_once(pipeline: Pipeline) -> None:
    parent = submit(pipeline, {"type": "test.fan", "payload": {"n": 120}})  # two buckets
    assert drain(pipeline) == 1 + 120 + 1  # parent, every child, the continuation
    view = pipeline.status.get("acme", parent)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.children == {"succeeded": 120}
    assert view.result == {
        "n": 120,
        "expected": 120,
        "total": sum(range(120)),
        "errors": [],
        "in_order": True,
    }
    continuation = view.continuation_id
    assert continuation is not None
    cont = pipeline.status.get("acme", continuation)
    assert (cont.status, cont.attempts, cont.parent_id) == (TaskStatus.SUCCEEDED, 1, parent)
    # A duplicate completion of any child changes nothing: the continuation already ran.
    child = pipeline.repository.children_of("acme", parent, open_fields=False)[0]
    pipeline.repository.events.flush(child, TaskStatus.SUCCEEDED)
    assert pipeline.status.get("acme", continuation).attempts == 1
    assert pipeline.pull(pipeline.tasks_sub) == []


def test_a_failed_child_fails_an_all_join_and_cancels_the_rest(pipeline: Pipeline) -> None:
    parent = submit(pipeline, {"type": "test.fan", "payload": {"n": 4, "fail": [0]}})
    pipeline.worker.process(message(parent))
    messages = {m["data"]["task_id"]: m for m in pipeline.pull(pipeline.tasks_sub)}
    children = pipeline.repository.children_of("acme", parent, open_fields=False)
    first = children[0].task_id  # the failing one, delivered first
    pipeline.worker.process(TaskMessage.model_validate(messages[first]["data"]))
    view = pipeline.status.get("acme", parent)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "child-failed"
    statuses = {
        c.status for c in pipeline.repository.children_of("acme", parent, open_fields=False)
    }
    assert statuses == {TaskStatus.FAILED, TaskStatus.CANCELLED}
    assert view.continuation_id is not None
    cont = pipeline.status.get("acme", view.continuation_id)
    assert cont.status is TaskStatus.CANCELLED
    dead = [m["data"]["task_id"] for m in pipeline.pull(pipeline.dead_letter_sub)]
    assert first in dead


def test_all_settled_gives_the_continuation_results_and_errors(pipeline: Pipeline) -> None:
    body = {"type": "test.fan", "payload": {"n": 5, "join": "all_settled", "fail": [1, 3]}}
    parent = submit(pipeline, body)
    drain(pipeline)
    view = pipeline.status.get("acme", parent)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.result is not None
    assert (view.result["errors"], view.result["total"]) == ([1, 3], 0 + 2 + 4)
    assert view.children == {"succeeded": 3, "failed": 2}


def test_an_any_join_takes_the_first_success_and_cancels_the_others(pipeline: Pipeline) -> None:
    parent = submit(pipeline, {"type": "test.fan", "payload": {"n": 3, "join": "any"}})
    pipeline.worker.process(message(parent))
    messages = {m["data"]["task_id"]: m for m in pipeline.pull(pipeline.tasks_sub)}
    children = pipeline.repository.children_of("acme", parent, open_fields=False)
    pipeline.worker.process(TaskMessage.model_validate(messages[children[2].task_id]["data"]))
    drain(pipeline)  # the continuation
    view = pipeline.status.get("acme", parent)
    assert view.status is TaskStatus.SUCCEEDED
    assert view.result == {"winner": {"i": 2}}
    assert view.children == {"succeeded": 1, "cancelled": 2}


def test_cancelling_a_waiting_parent_cancels_its_family(pipeline: Pipeline) -> None:
    parent = submit(pipeline, {"type": "test.fan", "payload": {"n": 3}})
    pipeline.worker.process(message(parent))
    pipeline.pull(pipeline.tasks_sub)
    assert pipeline.submit.cancel("acme", parent).status is TaskStatus.CANCELLED
    family = pipeline.repository.children_of("acme", parent, open_fields=False)
    assert {c.status for c in family} == {TaskStatus.CANCELLED}
    view = pipeline.status.get("acme", parent)
    assert view.continuation_id is not None
    assert pipeline.status.get("acme", view.continuation_id).status is TaskStatus.CANCELLED


def test_the_reconciler_finishes_a_join_whose_follow_up_was_lost(pipeline: Pipeline) -> None:
    parent = submit(pipeline, {"type": "test.fan", "payload": {"n": 2}})
    pipeline.worker.process(message(parent))
    children = [TaskMessage.model_validate(m["data"]) for m in pipeline.pull(pipeline.tasks_sub)]
    joins = pipeline.repository.events
    # The children finish but their follow-ups never run (a worker died after commit).
    pipeline.repository.events = _StageOnly(joins)
    for child in children:
        pipeline.worker.process(child)
    pipeline.repository.events = joins
    assert pipeline.status.get("acme", parent).status is TaskStatus.WAITING
    pipeline.db.collection("tasks").document(parent).update(
        {"updated_at": datetime.now(UTC) - timedelta(minutes=5)}
    )
    swept = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(minutes=15))
    swept.sweep()
    drain(pipeline)  # the continuation the reconciler fired
    assert pipeline.status.get("acme", parent).status is TaskStatus.SUCCEEDED


class _StageOnly:
    """Records what a terminal commit stages, and loses every follow-up."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def stage(self, batch: Any, task: Any, status: Any) -> None:
        self.inner.stage(batch, task, status)

    def flush(self, task: Any, status: Any) -> None:
        return None


# --- dependencies, and the analytics pipeline on them ----------------------------------


def test_a_task_that_depends_on_others_starts_once_they_all_succeeded(pipeline: Pipeline) -> None:
    first = submit(pipeline, {"type": "echo", "payload": {"i": 1}})
    pipeline.worker.process(message(first))  # finished before its dependent exists
    second = submit(pipeline, {"type": "echo", "payload": {"i": 2}})
    body = {"type": "test.sum", "payload": {"expected": 2}, "depends_on": [first, second]}
    merged = pipeline.submit.submit("acme", body)
    assert merged.waiting
    assert pipeline.status.get("acme", merged.task_id).status is TaskStatus.WAITING
    drain(pipeline)  # `second`, then the dependent it released
    view = pipeline.status.get("acme", merged.task_id)
    assert view.status is TaskStatus.SUCCEEDED
    with pytest.raises(ValidationFailed) as caught:
        pipeline.submit.submit("globex", {**body, "depends_on": [first]})
    assert caught.value.field == "depends_on.0"  # another tenant's task is nobody's


def test_a_failed_dependency_fails_its_dependent(pipeline: Pipeline) -> None:
    bad = submit(pipeline, {"type": "fail", "payload": {"times": 5, "retryable": False}})
    dependent = pipeline.submit.submit(
        "acme", {"type": "echo", "payload": {}, "depends_on": [bad]}
    ).task_id
    drain(pipeline)
    view = pipeline.status.get("acme", dependent)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "dependency-failed"


def test_the_analytics_pipeline_merges_chunks_exactly(pipeline: Pipeline) -> None:
    import random
    import statistics

    rng = random.Random(7)
    chunks = [[rng.gauss(1e6, 3.0) for _ in range(5000)] for _ in range(8)]
    ids = [submit(pipeline, {"type": "analytics.chunk", "payload": {"values": c}}) for c in chunks]
    merge = pipeline.submit.submit(
        "acme", {"type": "analytics.merge", "payload": {}, "depends_on": ids}
    )
    drain(pipeline)
    view = pipeline.status.get("acme", merge.task_id)
    assert view.status is TaskStatus.SUCCEEDED, view
    everything = [v for c in chunks for v in c]
    result = view.result
    assert result is not None
    assert result["count"] == len(everything)
    assert (result["min"], result["max"]) == (min(everything), max(everything))
    assert math.isclose(result["mean"], statistics.fmean(everything), rel_tol=1e-9)
    assert math.isclose(result["stdev"], statistics.stdev(everything), rel_tol=1e-9)
