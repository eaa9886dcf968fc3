"""What happens beside a task reaching a terminal status: a port for features that follow it.

The repository calls `stage` inside the very commit that makes a task terminal,
so whatever a feature records there (an outbox entry for a webhook, a join
count for a parent) is stored exactly when the outcome is, never lost between
the two. The worker calls `flush` once that commit returned, for the fast path
(a publish); a sweep covers a flush that never ran.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from shared.tasks.models import Task, TaskStatus


class TaskEvents(Protocol):
    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        """Add writes to `batch`, the commit that records `task` as `status` (terminal).

        `task` is as that commit records it: `status` and `finished_at` set. A
        commit retried after a conflict stages again, with the same task.
        """

    def flush(self, task: Task, status: TaskStatus) -> None:
        """After that commit: deliver what `stage` recorded (best effort; never raises)."""


class NoEvents:
    """Nothing follows a task: the default."""

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        return None

    def flush(self, task: Task, status: TaskStatus) -> None:
        return None


class LazyEvents:
    """The followers `build` makes, made at the first terminal transition.

    Reading a task never makes one: a status read's cold start does not load
    the webhook, workflow and budget features that only follow an outcome.
    """

    def __init__(self, build: Callable[[], TaskEvents]) -> None:
        self._build = build
        self._events: TaskEvents | None = None
        self._lock = threading.Lock()

    def _followers(self) -> TaskEvents:
        if self._events is None:
            with self._lock:
                if self._events is None:
                    self._events = self._build()
        return self._events

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        self._followers().stage(batch, task, status)

    def flush(self, task: Task, status: TaskStatus) -> None:
        self._followers().flush(task, status)


class AllEvents:
    """Several features following tasks, in order."""

    def __init__(self, *followers: TaskEvents) -> None:
        self._followers = followers

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        for follower in self._followers:
            follower.stage(batch, task, status)

    def flush(self, task: Task, status: TaskStatus) -> None:
        for follower in self._followers:
            follower.flush(task, status)

    @property
    def followers(self) -> tuple[TaskEvents, ...]:
        return self._followers

    def reconcile(self) -> int:
        """Each follower's sweep of what its lost follow-ups left (the redispatch sweep's)."""
        done = 0
        for follower in self._followers:
            reconcile = getattr(follower, "reconcile", None)
            if reconcile is not None:
                done += int(reconcile())
        return done
