"""Re-publishing tasks that should be running but are not, and dead letters not yet sent.

Covers a publish that failed after the task was stored, a message Pub/Sub
dropped, a worker that died mid-attempt (its lease expired), and a task that
failed for good whose dead-letter publish did not get through (the outbox).
Duplicates are harmless: the worker's lease lets one delivery run, and every
write here is conditioned on the document being as the sweep found it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.errors import Unavailable
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import TaskMessage
from shared.tasks.repository import Stuck, StuckTask, TaskRepository

log = logging.getLogger("aia.redispatch")

BATCH = 200
# The worker sends its own dead letters at once; the sweep only takes those it left.
DEAD_LETTER_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class Swept:
    found: int
    published: int
    dead_lettered: int = 0


class Redispatcher:
    def __init__(
        self, repository: TaskRepository, publisher: TaskPublisher, *, after: timedelta
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._after = after

    def sweep(self, limit: int = BATCH) -> Swept:
        now = datetime.now(UTC)
        stuck = self._repository.stuck(now, now - self._after, now - DEAD_LETTER_GRACE, limit)
        sent: list[StuckTask] = []
        for task in stuck:
            message = TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id)
            try:
                if task.reason is Stuck.DEAD_LETTER_PENDING:
                    data = json.dumps(message.model_dump(), separators=(",", ":")).encode()
                    attributes = {
                        "tenant_id": task.tenant_id,
                        "task_id": task.task_id,
                        "reason": "failed",
                        "swept": "true",
                    }
                    self._publisher.dead_letter(data, attributes)
                else:
                    self._publisher.publish(
                        message,
                        attributes={"redispatch": "true", "reason": task.reason.value},
                        traceparent=task.traceparent,
                    )
            except Unavailable:
                log.warning("redispatch publish failed", extra={"task_id": task.task_id})
                continue
            sent.append(task)
        if sent:
            self._repository.touch(sent, now)
        # Joins a lost follow-up left half-done: counted, fired, or completed now.
        reconcile = getattr(self._repository.events, "reconcile", None)
        if reconcile is not None:
            reconcile()
        dead = sum(t.reason is Stuck.DEAD_LETTER_PENDING for t in sent)
        log.info(
            "redispatch sweep",
            extra={"found": len(stuck), "published": len(sent) - dead, "dead_lettered": dead},
        )
        return Swept(found=len(stuck), published=len(sent) - dead, dead_lettered=dead)
