"""Sharded counters and count aggregations against the Firestore emulator."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.cloud import firestore

from shared.clients import firestore_client
from shared.operations.metrics import (
    BUCKETS,
    DURATION,
    SUBMITTED,
    collect,
    record_duration,
    record_outcome,
    record_submitted,
    render_json,
)
from shared.queries import METRIC_SHARDS, TASKS

pytestmark = pytest.mark.integration

TYPES = ["echo", "sleep"]


def _submit_in_transaction(db: Any, task_id: str, task_type: str, shards: int) -> None:
    @firestore.transactional
    def run(tx: Any) -> None:
        tx.set(db.collection(TASKS).document(task_id), {"status": "queued", "type": task_type})
        record_submitted(tx, db, task_type, shards=shards)

    run(db.transaction())


def _submit_in_batch(db: Any, task_id: str, task_type: str, shards: int) -> None:
    batch = db.batch()
    batch.set(db.collection(TASKS).document(task_id), {"status": "queued", "type": task_type})
    record_submitted(batch, db, task_type, shards=shards)
    batch.commit()


def test_concurrent_writers_lose_no_count(emulators_clean: dict[str, str]) -> None:
    db = firestore_client()
    shards = 4

    def submit(i: int) -> None:
        writer = _submit_in_transaction if i % 2 else _submit_in_batch
        writer(db, f"t{i:04d}", TYPES[i % 3 == 0], shards)

    # Many instances at once: transactions and batches mixed, few shards, so
    # writes really do land on the same shard documents concurrently.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(submit, range(120)))

    snapshot = collect(db, TYPES)
    expected_sleep = sum(1 for i in range(120) if i % 3 == 0)
    assert snapshot.submitted == {"echo": 120 - expected_sleep, "sleep": expected_sleep}
    assert snapshot.tasks[("queued", "echo")] == 120 - expected_sleep
    assert snapshot.tasks[("queued", "sleep")] == expected_sleep

    docs = list(db.collection(METRIC_SHARDS).stream())
    assert 2 <= len(docs) <= 2 * shards
    for doc in docs:
        metric, task_type, shard = doc.id.split(":")
        assert metric == SUBMITTED
        assert task_type in TYPES
        assert 0 <= int(shard) < shards
        assert (doc.to_dict() or {}).get("type") == task_type


def test_empty_counts_come_back_as_ints(emulators_clean: dict[str, str]) -> None:
    snapshot = collect(firestore_client(), TYPES)
    assert len(snapshot.tasks) == 2 * len(TYPES)  # queued and running, per type
    assert set(snapshot.tasks.values()) == {0}
    assert len(snapshot.finished) == 2 * len(TYPES)  # succeeded and failed, per type
    assert set(snapshot.finished.values()) == {0}
    assert all(type(n) is int for n in snapshot.finished.values())
    assert all(type(n) is int for n in snapshot.tasks.values())
    assert all(type(n) is int for n in snapshot.submitted.values())


def test_live_counts_follow_task_status_and_finished_ones_follow_outcomes(
    emulators_clean: dict[str, str],
) -> None:
    db = firestore_client()
    batch = db.batch()
    statuses = ["queued", "running", "running", "succeeded", "failed", "failed", "failed"]
    for i, status in enumerate(statuses):
        batch.set(db.collection(TASKS).document(f"t{i}"), {"status": status, "type": "echo"})
        if status in ("succeeded", "failed"):
            record_duration(batch, db, "echo", 0.01, shards=2, outcome=status)
    batch.set(db.collection(TASKS).document("other"), {"status": "failed", "type": "sleep"})
    record_outcome(batch, db, "sleep", "failed", shards=2)
    batch.commit()

    body = render_json(collect(db, TYPES))
    assert body["aia_tasks"] == {
        "queued": {"echo": 1, "sleep": 0},
        "running": {"echo": 2, "sleep": 0},
    }
    assert body["aia_tasks_finished_total"] == {
        "succeeded": {"echo": 1, "sleep": 0},
        "failed": {"echo": 3, "sleep": 1},
    }


def test_durations_accumulate_into_a_histogram(emulators_clean: dict[str, str]) -> None:
    db = firestore_client()
    observed = [0.003, 0.04, 0.04, 0.7, 12.0, 1000.0]
    for seconds in observed:
        batch = db.batch()
        record_duration(batch, db, "sleep", seconds, shards=3)
        batch.commit()

    hist = collect(db, TYPES).durations["sleep"]
    assert hist.count == len(observed)
    assert hist.total == pytest.approx(sum(observed))
    cumulative = dict(hist.cumulative())
    for bound in (*BUCKETS, math.inf):
        assert cumulative[bound] == sum(1 for s in observed if s <= bound), bound
    assert collect(db, TYPES).durations["echo"].count == 0

    ids = [doc.id for doc in db.collection(METRIC_SHARDS).stream()]
    assert ids
    assert all(i.startswith(f"{DURATION}:sleep:") for i in ids)
