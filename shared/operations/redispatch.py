"""Re-publishing tasks that should be running but are not.

Covers a publish that failed after the task was stored, a message Pub/Sub
dropped after its own dead-letter limit, and a worker that died mid-attempt.
Duplicates are harmless: the worker's claim lets one delivery run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.errors import Unavailable
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import TaskMessage
from shared.tasks.repository import TaskRepository

log = logging.getLogger("aia.redispatch")

BATCH = 200


@dataclass(frozen=True)
class Swept:
    found: int
    published: int


class Redispatcher:
    def __init__(
        self, repository: TaskRepository, publisher: TaskPublisher, *, after: timedelta
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._after = after

    def sweep(self, limit: int = BATCH) -> Swept:
        now = datetime.now(UTC)
        stuck = self._repository.stuck(now, now - self._after, limit)
        published: list[str] = []
        for task in stuck:
            try:
                self._publisher.publish(
                    TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id),
                    attributes={"redispatch": "true"},
                )
            except Unavailable:
                log.warning("redispatch publish failed", extra={"task_id": task.task_id})
                continue
            published.append(task.task_id)
        if published:
            self._repository.touch(published, now)
        log.info("redispatch sweep", extra={"found": len(stuck), "published": len(published)})
        return Swept(found=len(stuck), published=len(published))
