"""Delayed tasks on Firestore: find the `scheduled` tasks that are due, and queue each once.

A delayed task is its own timer: status `scheduled` and a plain `run_at`
(`shared.tasks.documents`). Queueing is one write conditioned on the document's
update time, so of two tickers that read the same due task exactly one moves
it to `queued` and only that one publishes it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import queries
from shared.clients import TICK_CALL
from shared.tasks.models import TaskStatus

log = logging.getLogger("aia.timers")


@dataclass(frozen=True)
class DueTask:
    task_id: str
    tenant_id: str
    type: str
    version: Any  # the update time the queueing write is conditioned on
    traceparent: str | None = None  # the trace the task was submitted in


def due_query(db: Any, spec: queries.QuerySpec, values: dict[str, Any], now: datetime) -> Any:
    """A due-timer query from its declared spec: every shard at once, due at or before `now`."""
    from google.cloud.firestore import FieldFilter

    assert spec.sharded
    assert spec.range_field is not None
    shard, *equals = spec.equals
    query = db.collection(spec.collection).where(
        filter=FieldFilter(shard, "in", queries.all_shards())
    )
    for name in equals:
        query = query.where(filter=FieldFilter(name, "==", values[name]))
    query = query.where(filter=FieldFilter(spec.range_field, "<=", now))
    for name, direction in spec.order:
        query = query.order_by(name, direction=direction)
    return query


def conditional_errors() -> tuple[type[BaseException], ...]:
    """What a write conditioned on an update time raises when the document moved on or went."""
    from google.api_core.exceptions import FailedPrecondition, NotFound

    return FailedPrecondition, NotFound


class FirestoreTimers:
    def __init__(self, db: Any) -> None:
        self._db = db
        self._tasks = db.collection(queries.TASKS)

    def due(self, now: datetime, limit: int) -> list[DueTask]:
        query = due_query(
            self._db, queries.DUE_TASKS, {"status": TaskStatus.SCHEDULED.value}, now
        ).limit(limit)
        return [
            DueTask(
                snap.id,
                doc.get("tenant_id", ""),
                doc.get("type", ""),
                snap.update_time,
                doc.get("traceparent"),
            )
            for snap in query.stream(**TICK_CALL.kwargs())
            for doc in (snap.to_dict() or {},)
        ]

    def queue(self, due: list[DueTask], now: datetime) -> list[DueTask]:
        """Move each due task to `queued` if it is still as read; the ones this call moved."""
        lost = conditional_errors()
        changes = {"status": TaskStatus.QUEUED.value, "updated_at": now, "dispatch_pending": False}

        def write(task: DueTask) -> bool:
            try:
                self._tasks.document(task.task_id).update(
                    changes,
                    option=self._db.write_option(last_update_time=task.version),
                    **TICK_CALL.kwargs(),
                )
            except lost:
                return False  # another ticker queued it, or it was cancelled or removed
            return True

        if not due:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(due))) as pool:
            futures = [(task, pool.submit(write, task)) for task in due]
        won = []
        for task, future in futures:
            try:
                if future.result():
                    won.append(task)
            except Exception:  # still scheduled and due: the next tick tries again
                log.exception("queueing a due task failed", extra={"task_id": task.task_id})
        return won

    def mark_dispatch_pending(self, task_id: str) -> None:
        """Queued but not published: the redispatch sweep publishes it."""
        self._tasks.document(task_id).update({"dispatch_pending": True}, **TICK_CALL.kwargs())
