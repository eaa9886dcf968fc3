"""Concurrency limits on the emulators: slots taken with the lease, waiting tasks woken."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.errors import AIAError, ValidationFailed
from shared.flow.concurrency import slot_id
from shared.tasks.diagnostic import read_probe
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.worker import Outcome, Worker

from .conftest import Pipeline

pytestmark = pytest.mark.integration

TENANT = "acme"


def _status(pipeline: Pipeline, task_id: str) -> str:
    return str(pipeline.status.get(TENANT, task_id).status.value)


def _deliver(worker: Worker, task_id: str) -> Any:
    try:
        return worker.process(TaskMessage(task_id=task_id, tenant_id=TENANT)).outcome
    except AIAError as exc:  # nacked: Pub/Sub would deliver it again
        return exc.code


def test_never_more_than_the_limit_run_and_every_task_finishes(pipeline: Pipeline) -> None:
    worker = pipeline.limited_worker()
    marker = f"conc-{uuid.uuid4().hex[:12]}"
    key = f"user-{uuid.uuid4().hex[:6]}"
    ids = [
        pipeline.submit.submit(
            TENANT,
            {
                "type": "probe",
                "payload": {"marker": marker, "seconds": 0.3},
                "concurrency_key": key,
                "max_running": 3,
            },
        ).task_id
        for _ in range(24)
    ]
    seen_blocked: set[str] = set()
    pending: list[Future[Any]] = []
    deadline = time.monotonic() + 180
    with ThreadPoolExecutor(max_workers=12) as pool:
        while time.monotonic() < deadline:
            # What submit published, and what releases published again (the wake-ups).
            for message in pipeline.pull(pipeline.tasks_sub, max_messages=100):
                pending.append(pool.submit(_deliver, worker, message["data"]["task_id"]))
            for task_id in ids:
                view = pipeline.status.get(TENANT, task_id)
                if view.status is TaskStatus.QUEUED and view.blocked_by == f"concurrency:{key}":
                    seen_blocked.add(task_id)
            if all(_status(pipeline, t) == "succeeded" for t in ids):
                break
            time.sleep(0.1)
        for future in pending:
            future.result()
    assert all(_status(pipeline, t) == "succeeded" for t in ids)
    probe = read_probe(marker)
    assert len(probe["attempts"]) == 24
    assert probe["overlaps"] == []
    assert 2 <= probe["max_concurrency"] <= 3, probe["max_concurrency"]
    # Tasks over the limit were accepted and waited, saying why; none waits now.
    assert seen_blocked
    assert all(pipeline.status.get(TENANT, t).blocked_by is None for t in ids)
    # Every slot is free again.
    for i in range(3):
        slot = pipeline.db.collection("concurrency_slots").document(slot_id(TENANT, key, i)).get()
        assert slot.exists
        assert slot.get("holder") is None


def test_a_slot_whose_holder_died_frees_itself_when_its_lease_would_end(
    pipeline: Pipeline,
) -> None:
    worker = pipeline.limited_worker()
    key = f"user-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    pipeline.db.collection("concurrency_slots").document(slot_id(TENANT, key, 0)).set(
        {"holder": "f" * 32, "lease_id": "gone", "until": now + timedelta(seconds=2)}
    )
    task_id = pipeline.submit.submit(
        TENANT, {"type": "echo", "payload": {"n": 1}, "concurrency_key": key}
    ).task_id
    assert _deliver(worker, task_id) is Outcome.WAITING
    view = pipeline.status.get(TENANT, task_id)
    assert view.status is TaskStatus.QUEUED
    assert view.blocked_by == f"concurrency:{key}"
    time.sleep(2.5)  # the dead holder's lease ends: its slot is free for the taking
    assert _deliver(worker, task_id) is Outcome.SUCCEEDED
    assert pipeline.status.get(TENANT, task_id).blocked_by is None


def test_a_limit_needs_a_key_and_a_key_has_a_shape(pipeline: Pipeline) -> None:
    for body, field in (
        ({"type": "echo", "payload": {}, "max_running": 2}, "max_running needs"),
        ({"type": "echo", "payload": {}, "concurrency_key": "bad key!"}, "concurrency_key"),
        ({"type": "echo", "payload": {}, "concurrency_key": "k", "max_running": 0}, "max_running"),
    ):
        with pytest.raises(ValidationFailed, match=field):
            pipeline.submit.submit(TENANT, body)
