"""The followers of a task's outcome, made when the first outcome needs them."""

from __future__ import annotations

import threading
from typing import Any

from shared.tasks.events import LazyEvents
from shared.tasks.models import Task, TaskStatus


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, TaskStatus]] = []

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        self.calls.append(("stage", status))

    def flush(self, task: Task, status: TaskStatus) -> None:
        self.calls.append(("flush", status))


def test_the_followers_are_made_at_the_first_outcome_and_only_once() -> None:
    made: list[Recording] = []

    def build() -> Recording:
        made.append(Recording())
        return made[-1]

    events = LazyEvents(build)
    assert made == []
    task: Any = object()
    events.stage(None, task, TaskStatus.SUCCEEDED)
    events.flush(task, TaskStatus.SUCCEEDED)
    events.stage(None, task, TaskStatus.FAILED)
    assert len(made) == 1
    assert made[0].calls == [
        ("stage", TaskStatus.SUCCEEDED),
        ("flush", TaskStatus.SUCCEEDED),
        ("stage", TaskStatus.FAILED),
    ]


def test_outcomes_racing_at_a_cold_start_share_one_set_of_followers() -> None:
    made: list[Recording] = []
    start = threading.Barrier(8)

    def build() -> Recording:
        made.append(Recording())
        return made[-1]

    events = LazyEvents(build)

    def finish() -> None:
        start.wait()
        events.flush(object(), TaskStatus.SUCCEEDED)  # type: ignore[arg-type]

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    assert len(made[0].calls) == 8
