"""The task pipeline's use cases against the official Firestore and Pub/Sub emulators."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from shared.errors import (
    IdempotencyMismatch,
    IntegrityError,
    KeyUnavailable,
    NotFound,
    PayloadTooLarge,
    TaskBusy,
    TaskFailure,
    ValidationFailed,
)
from shared.operations import metrics
from shared.operations.redispatch import Redispatcher
from shared.security.crypto import TaskOpener, TaskSealer
from shared.security.keyring import rotate_keyring
from shared.security.rotation import rewrap_all
from shared.tasks.dispatch import PubSubTaskPublisher
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import ClaimState, FirestoreTaskRepository
from shared.tasks.worker import Outcome

from .conftest import PROJECT, Pipeline

pytestmark = pytest.mark.integration


def submit(p: Pipeline, body: dict[str, Any], tenant: str = "acme", key: str | None = None) -> str:
    return p.submit.submit(tenant, body, key).task_id


def message(task_id: str, tenant: str = "acme") -> TaskMessage:
    return TaskMessage(task_id=task_id, tenant_id=tenant)


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
    assert [m["data"] for m in published] == [{"task_id": task_id, "tenant_id": "acme"}]
    assert published[0]["attributes"]["type"] == "echo"

    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.QUEUED
    assert view.attempts == 0
    assert view.max_attempts == 3


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


def test_concurrent_deliveries_run_the_handler_once(pipeline: Pipeline) -> None:
    runs: list[str] = []
    gate = threading.Event()

    class Empty(BaseModel):
        pass

    registry = TaskRegistry()

    @registry.register("echo", Empty)
    def counted(payload: Empty, ctx: Any) -> dict[str, int]:
        runs.append(ctx.task_id)
        gate.wait(5)
        return {"runs": len(runs)}

    worker = pipeline.with_registry(registry)
    task_id = submit(pipeline, {"type": "echo", "payload": {}})
    outcomes: list[Any] = []

    def deliver() -> None:
        try:
            outcomes.append(worker.process(message(task_id)).outcome)
        except TaskBusy as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(0.5)
    gate.set()
    for thread in threads:
        thread.join(60)

    assert runs == [task_id]
    assert outcomes.count(Outcome.SUCCEEDED) == 1
    assert all(
        o is Outcome.SUCCEEDED or isinstance(o, TaskBusy) or o is Outcome.SKIPPED for o in outcomes
    )
    assert pipeline.status.get("acme", task_id).attempts == 1


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
        pipeline, {"type": "sleep", "payload": {"seconds": 3}, "timeout_s": 1, "max_attempts": 1}
    )
    assert pipeline.worker.process(message(task_id)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", task_id)
    assert view.error is not None
    assert view.error.code == "timeout"


def test_expired_lease_on_last_attempt_fails_the_task(pipeline: Pipeline) -> None:
    task_id = submit(pipeline, {"type": "echo", "payload": {}, "max_attempts": 1})
    now = datetime.now(UTC)
    assert pipeline.repository.claim("acme", task_id, now).state is ClaimState.CLAIMED
    # Another delivery while the lease is live must wait.
    with pytest.raises(TaskBusy):
        pipeline.worker.process(message(task_id))
    # Much later the worker is presumed dead; no attempts remain.
    later = now + timedelta(hours=1)
    assert pipeline.repository.claim("acme", task_id, later).state is ClaimState.EXHAUSTED
    view = pipeline.status.get("acme", task_id)
    assert view.status is TaskStatus.FAILED
    assert view.error is not None
    assert view.error.code == "lease-expired"


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


def test_failed_publish_is_flagged_and_redispatched(pipeline: Pipeline) -> None:
    broken = PubSubTaskPublisher(
        pipeline.publisher._client,
        f"projects/{PROJECT}/topics/missing-topic",
        f"projects/{PROJECT}/topics/missing-dl",
    )
    from shared.config import Settings
    from shared.tasks.registry import builtin_registry
    from shared.tasks.submission import SubmitService

    service = SubmitService(
        pipeline.repository,
        broken,
        builtin_registry(),
        TaskSealer(pipeline.ring),
        Settings(project=PROJECT),
    )
    submitted = service.submit("acme", {"type": "echo", "payload": {}})
    assert not submitted.dispatched
    raw = pipeline.db.collection("tasks").document(submitted.task_id).get().to_dict()
    assert raw["dispatch_pending"] is True

    swept = Redispatcher(
        pipeline.repository, pipeline.publisher, after=timedelta(minutes=5)
    ).sweep()
    assert (swept.found, swept.published) == (1, 1)
    assert [m["data"]["task_id"] for m in pipeline.pull(pipeline.tasks_sub)] == [submitted.task_id]
    # Picked up once: the next sweep leaves it alone until it is stale again.
    again = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(minutes=5))
    assert again.sweep().found == 0


def test_redispatch_finds_stale_queued_and_expired_leases(pipeline: Pipeline) -> None:
    queued = submit(pipeline, {"type": "echo", "payload": {}})
    running = submit(pipeline, {"type": "echo", "payload": {}})
    pipeline.pull(pipeline.tasks_sub)
    pipeline.repository.claim("acme", running, datetime.now(UTC) - timedelta(hours=1))
    swept = Redispatcher(pipeline.repository, pipeline.publisher, after=timedelta(0)).sweep()
    assert swept.published == 2
    assert {m["data"]["task_id"] for m in pipeline.pull(pipeline.tasks_sub)} == {queued, running}


def test_metrics_count_submissions_and_durations(pipeline: Pipeline) -> None:
    for _ in range(3):
        task_id = submit(pipeline, {"type": "echo", "payload": {}})
    pipeline.worker.process(message(task_id))
    snapshot = metrics.collect(pipeline.db, ["echo", "sleep"])
    figures = metrics.render_json(snapshot)
    text = json.dumps(figures)
    assert figures, text
    exposition = metrics.render_prometheus(snapshot).decode()
    assert 'aia_tasks_submitted_total{type="echo"} 3.0' in exposition
    assert 'aia_task_duration_seconds_count{type="echo"} 1.0' in exposition
    assert 'aia_tasks{status="queued",type="echo"} 2.0' in exposition
    assert 'aia_tasks{status="succeeded",type="echo"} 1.0' in exposition


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
    assert (report.rewrapped, report.unreadable) == (6, [ids[3]])


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
    class Size(BaseModel):
        n: int

    registry = TaskRegistry()

    @registry.register("echo", Size)
    def inflate(payload: Size, ctx: Any) -> str:
        return "y" * payload.n

    worker = pipeline.with_registry(registry)
    big = submit(pipeline, {"type": "echo", "payload": {"n": 1024 * 1024}})
    assert worker.process(message(big)).outcome is Outcome.FAILED
    view = pipeline.status.get("acme", big)
    assert (view.status, view.attempts) == (TaskStatus.FAILED, 1)
    assert view.error is not None
    assert view.error.code == "result-too-large"
    small = submit(pipeline, {"type": "echo", "payload": {"n": 10}})
    assert worker.process(message(small)).outcome is Outcome.SUCCEEDED


def test_a_ring_missing_the_data_key_is_retried_not_failed(pipeline: Pipeline) -> None:
    # Mid-rotation deploy: submit already has the new ring, this worker the old one.
    newer = rotate_keyring(pipeline.ring)
    documents = TaskDocuments(TaskSealer(newer), TaskOpener(newer), retention=timedelta(days=1))
    new_repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4)
    from shared.config import Settings
    from shared.tasks.registry import builtin_registry
    from shared.tasks.submission import SubmitService
    from shared.tasks.worker import Worker

    new_submit = SubmitService(
        new_repository,
        pipeline.publisher,
        builtin_registry(),
        TaskSealer(newer),
        Settings(project=PROJECT),
    )
    task_id = new_submit.submit("acme", {"type": "echo", "payload": {"v": 1}}).task_id
    with pytest.raises(KeyUnavailable):
        pipeline.worker.process(message(task_id))
    assert pipeline.status.get("acme", task_id).status is TaskStatus.QUEUED
    # Once the new ring reaches the worker the task runs normally.
    new_worker = Worker(new_repository, builtin_registry(), pipeline.publisher)
    assert new_worker.process(message(task_id)).outcome is Outcome.SUCCEEDED


def test_handler_error_text_stays_out_of_the_logs(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    class Card(BaseModel):
        card: str

    registry = TaskRegistry()

    @registry.register("echo", Card)
    def charge(payload: Card, ctx: Any) -> None:
        raise ValueError(f"card {payload.card} declined")

    worker = pipeline.with_registry(registry)
    card = "4111-1111-1111-1111"
    task_id = submit(pipeline, {"type": "echo", "payload": {"card": card}, "max_attempts": 2})
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TaskFailure) as caught:
            worker.process(message(task_id))
        assert card not in str(caught.value)
        assert worker.process(message(task_id)).outcome is Outcome.FAILED
    logged = "\n".join(f"{r.getMessage()} {r.__dict__} {r.exc_text or ''}" for r in caplog.records)
    assert card not in logged
    error = pipeline.status.get("acme", task_id).error
    assert error is not None
    assert card in error.message  # the client still reads why it failed
