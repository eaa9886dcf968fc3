"""The ticker: queue the delayed tasks that are due, and fire the cron slots that are due.

Run by Cloud Scheduler once a minute (and, within that call, once a second
for most of the minute: see docs/scheduling.md), and by the local stack about
once a second. Any number may run at once, and late:

- a due task is queued by one write conditioned on its update time, and only
  the ticker whose write won publishes it;
- a slot's task is submitted through `SubmitService.submit` with the
  Idempotency-Key `schedule:<id>:<slot>`, so tickers racing on one slot get one
  task, and the schedule advances by one write conditioned on its update time,
  so two tickers cannot both move it on. A ticker that dies between the two
  leaves the slot due; the next one replays the same key and advances.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from shared.clients import TICK_CALL
from shared.errors import AIAError, Unavailable
from shared.scheduling.policy import Overlap, Plan, plan
from shared.scheduling.schedules import (
    FirestoreScheduleRepository,
    ScheduleDocuments,
    StoredSchedule,
)
from shared.scheduling.timers import DueTask, FirestoreTimers
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import TaskMessage
from shared.tasks.submission import SubmitService

log = logging.getLogger("aia.ticker")

BATCH = 200  # due tasks, and due schedules, handled per tick
MAX_LOOP_S = 100.0  # the function's timeout is 120 s


@dataclass
class Ticked:
    ticks: int = 0
    tasks_dispatched: int = 0
    slots_fired: int = 0
    slots_skipped: int = 0
    slots_missed: int = 0
    failed_ticks: int = 0

    def add(self, other: Ticked) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def slot_key(schedule_id: str, slot: datetime) -> str:
    """The Idempotency-Key of one slot of one schedule."""
    return f"schedule:{schedule_id}:{slot.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Ticker:
    def __init__(
        self,
        timers: FirestoreTimers,
        schedules: FirestoreScheduleRepository,
        documents: ScheduleDocuments,
        submit: SubmitService,
        publisher: TaskPublisher,
        *,
        clock: Callable[[], datetime] = _utcnow,
        batch: int = BATCH,
    ) -> None:
        self._timers = timers
        self._schedules = schedules
        self._documents = documents
        self._submit = submit
        self._publisher = publisher
        self._clock = clock
        self._batch = batch

    def tick(self) -> Ticked:
        """One pass over what is due now."""
        now = self._clock()
        ticked = Ticked(ticks=1, tasks_dispatched=self._dispatch_tasks(now))
        due = self._schedules.due(now, self._batch)
        if due:
            with ThreadPoolExecutor(max_workers=min(8, len(due))) as pool:
                for result in pool.map(lambda s: self._advance_safely(s, now), due):
                    ticked.add(result)
        return ticked

    def run(
        self,
        *,
        for_s: float,
        every_s: float,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Ticked:
        """Tick every `every_s` for about `for_s` (at least once): one call covers a minute."""
        started = monotonic()
        total = Ticked()
        while True:
            began = monotonic()
            try:
                total.add(self.tick())
            except Exception:
                log.exception("tick failed")
                total.add(Ticked(ticks=1, failed_ticks=1))
            if monotonic() - started + every_s > for_s:
                return total
            sleep(max(0.0, every_s - (monotonic() - began)))

    # -- delayed tasks -----------------------------------------------------------

    def _dispatch_tasks(self, now: datetime) -> int:
        won = self._timers.queue(self._timers.due(now, self._batch), now)
        if won:
            with ThreadPoolExecutor(max_workers=min(8, len(won))) as pool:
                list(pool.map(self._publish, won))
        return len(won)

    def _publish(self, task: DueTask) -> None:
        message = TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id)
        try:
            self._publisher.publish(
                message,
                attributes={"type": task.type, "scheduled": "true"},
                traceparent=task.traceparent,
            )
        except Unavailable:
            log.warning("publish failed; task left for redispatch", extra={"task_id": task.task_id})
            try:
                self._timers.mark_dispatch_pending(task.task_id)
            except Exception:
                log.exception("could not flag task for redispatch", extra={"task_id": task.task_id})

    # -- cron schedules ------------------------------------------------------------

    def _advance_safely(self, stored: StoredSchedule, now: datetime) -> Ticked:
        try:
            return self._advance(stored, now)
        except Exception:
            log.exception("schedule not advanced", extra={"schedule_id": stored.schedule_id})
            return Ticked()

    def _advance(self, stored: StoredSchedule, now: datetime) -> Ticked:
        due = stored.due()
        needs_previous = due.buffered_slot is not None or (
            due.next_run_at <= now and due.overlap is not Overlap.ALLOW
        )
        last = stored.last_task_id
        finished = not needs_previous or last is None or self._schedules.finished(last)
        steps = plan(stored.cron, due, now=now, previous_finished=finished)
        changes: dict[str, Any] = {
            "next_run_at": steps.next_run_at,
            "buffered_slot": steps.buffered_slot,
            "due_at": steps.due_at,
            "updated_at": now,
        }
        fired, errors = self._fire(stored, steps, changes)
        if fired is None:
            return Ticked()  # a dependency failed: the slot stays due, with the same key
        changes["fired"] = int(stored.doc.get("fired", 0)) + fired
        changes["skipped"] = int(stored.doc.get("skipped", 0)) + steps.skipped + errors
        changes["missed"] = int(stored.doc.get("missed", 0)) + steps.missed
        if not self._schedules.update(stored, changes, TICK_CALL):
            # Another ticker moved it on; any slot both submitted is one task (same key).
            return Ticked()
        return Ticked(
            slots_fired=fired, slots_skipped=steps.skipped + errors, slots_missed=steps.missed
        )

    def _fire(
        self, stored: StoredSchedule, steps: Plan, changes: dict[str, Any]
    ) -> tuple[int | None, int]:
        """Submit each slot to fire; (fired, refused), or (None, 0) to retry the tick later."""
        fired = refused = 0
        for slot in steps.fire:
            try:
                body = {
                    "type": stored.doc["type"],
                    "payload": self._documents.payload(stored),
                    "max_attempts": stored.doc["max_attempts"],
                    "timeout_s": stored.doc["timeout_s"],
                }
                submitted = self._submit.submit(
                    stored.tenant_id, body, idempotency_key=slot_key(stored.schedule_id, slot)
                )
            except AIAError as exc:
                if exc.retryable:  # a dependency or a key not here yet: the next tick retries
                    return None, 0
                # Refused for good (a type this deployment dropped, a tampered payload):
                # the slot is skipped and the reason shown on the schedule.
                log.warning(
                    "slot refused",
                    extra={"schedule_id": stored.schedule_id, "code": exc.code},
                )
                changes["last_error"] = {
                    "code": exc.code,
                    "slot": slot.isoformat(),
                    "message": exc.detail,
                }
                refused += 1
                continue
            changes["last_slot"] = slot
            changes["last_task_id"] = submitted.task_id
            fired += 1
        return fired, refused
