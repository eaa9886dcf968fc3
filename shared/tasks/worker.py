"""Processing one task delivery: open the task, claim an attempt, run it, record the outcome.

Pub/Sub push is at-least-once. A lease in the task's own document (taken and
released by writes conditioned on the document's update time) makes each
attempt run once; the attempt count lives in the task, not in Pub/Sub. The
handler runs in a child process (`shared.tasks.runner`) that is stopped at the
attempt's deadline, and the lease outlasts that deadline, so a retry can never
start while an earlier attempt still runs.

What no redelivery can fix ends the task `failed` after a bounded number of
deliveries and puts it in the dead-letter outbox, instead of nacking until
Pub/Sub's retention runs out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared import tracing
from shared.errors import (
    AIAError,
    KeyUnavailable,
    NestingTooDeep,
    ResultInvalid,
    ResultTooLarge,
    StartDeferred,
    TaskFailure,
    Unavailable,
)
from shared.flow.concurrency import TENANT_GROUP, ConcurrencySlots, SlotClaims, SlotGroup, rank
from shared.limits import loads_bounded
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import Task, TaskError, TaskMessage, TaskStatus
from shared.tasks.progress import ProgressWriter
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import Lease, Opened, Problem, SlotTaken, TaskRepository
from shared.tasks.runner import STOP_GRACE_S, AttemptOutcome, AttemptRunner, AttemptSpec
from shared.workflows.fanout import FanOut, InvalidFanOut

if TYPE_CHECKING:
    from shared.workflows.joins import Joins

log = logging.getLogger("aia.worker")

MAX_ERROR_CHARS = 4000
_MAX_CONFLICTS = 5


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # attempt failed; Pub/Sub redelivers with backoff
    FAILED = "failed"  # failed for good, dead-lettered
    CANCELLED = "cancelled"  # cancelled while it ran (or before): acknowledged
    WAITING = "waiting"  # handed its work to children: acknowledged, no worker held
    SKIPPED = "skipped"  # duplicate, busy or unknown delivery: acknowledged


@dataclass(frozen=True)
class Processed:
    outcome: Outcome
    detail: str = ""
    duration_s: float | None = None  # the attempt's run time, when one ran to an outcome


@dataclass(frozen=True)
class WorkerPolicy:
    """Bounds that turn endless redelivery into a clear failure."""

    # A ring still missing a task's key after this long is not a deploy in progress.
    key_grace: timedelta = timedelta(minutes=15)
    # Deliveries that could not start a task (undecodable, unknown type) before it fails.
    max_start_failures: int = 5
    # Beyond the deadline and the stop grace: time to record the outcome under the lease.
    lease_margin_s: float = 10.0

    def lease_seconds(self, timeout_s: float) -> float:
        return timeout_s + STOP_GRACE_S + self.lease_margin_s


class Worker:
    def __init__(
        self,
        repository: TaskRepository,
        registry: TaskRegistry,
        publisher: TaskPublisher,
        runner: AttemptRunner,
        *,
        policy: WorkerPolicy | None = None,
        joins: Joins | None = None,
        slots: ConcurrencySlots | None = None,
        tenant_limit: Callable[[str], int | None] | None = None,
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._publisher = publisher
        self._runner = runner
        self._policy = policy or WorkerPolicy()
        self._joins = joins
        self._slots = slots
        # The tenant's own max_running (operators' flow configuration), None: no limit.
        self._tenant_limit = tenant_limit

    def close(self) -> None:
        """Stop the handler processes this worker keeps."""
        self._runner.close()

    def process(self, message: TaskMessage) -> Processed:
        self._runner.warm()  # the child starts while the task is read
        # A fresh task's first delivery carries its document: no read unless it changed.
        described = self._repository.opened_from_message(message)
        for _ in range(_MAX_CONFLICTS):
            opened = described or self._repository.load(message.tenant_id, message.task_id)
            described = None
            now = datetime.now(UTC)
            decided = self._decide(message, opened, now)
            if decided is _RELOAD:
                continue
            if decided is not None:
                assert isinstance(decided, Processed)
                return decided
            assert opened.task is not None
            lease_until = now + timedelta(seconds=self._policy.lease_seconds(opened.task.timeout_s))
            taken = self._lease(opened, now, lease_until)
            if isinstance(taken, Processed):
                return taken  # waits for a concurrency slot
            lease, claim = taken
            if lease is None:
                continue  # another delivery moved the task on: look again
            try:
                return self._run(message, lease, lease_until)
            finally:
                if claim is not None and self._slots is not None:
                    # The attempt is over, however it ended: its slots go to waiting tasks.
                    self._slots.release(claim.held(lease.slot_version))
        raise Unavailable(f"task {message.task_id} kept changing under this delivery")

    def _groups(self, task: Task) -> list[SlotGroup]:
        """The limits this task runs under: its concurrency key's, then its tenant's."""
        groups: list[SlotGroup] = []
        if task.concurrency_key is not None:
            groups.append(SlotGroup(task.concurrency_key, task.max_running or 1))
        tenant_limit = self._tenant_limit(task.tenant_id) if self._tenant_limit else None
        if tenant_limit is not None:
            groups.append(SlotGroup(TENANT_GROUP, tenant_limit))
        return groups

    def _lease(  # noqa: PLR0911 - one answer per way a claim can end
        self, opened: Opened, now: datetime, lease_until: datetime
    ) -> tuple[Lease | None, SlotClaims | None] | Processed:
        """The lease, with a slot of each limit the task runs under; or it waits for one."""
        task = opened.task
        assert task is not None
        groups = self._groups(task) if self._slots is not None else []
        if not groups or self._slots is None:
            return self._repository.take_lease(opened, now, lease_until), None
        for _ in range(_MAX_CONFLICTS):
            claim = self._slots.claim(
                task.tenant_id,
                groups,
                task_id=task.task_id,
                until=lease_until,
                now=now,
                handed=task.handed_slot,
            )
            if isinstance(claim, SlotGroup):
                full = claim
                if task.blocked_by == full.reason and task.handed_slot is None:
                    # Parked before: a release hands it a slot and publishes it again.
                    return Processed(Outcome.WAITING, full.reason)
                ready_at = rank(task.created_at, task.priority)
                if not self._repository.park(opened, full.reason, now, ready_at):
                    return None, None  # moved on meanwhile: look again
                if task.handed_slot is not None:
                    # Kept for it, but another of its limits is full: the next in line gets it.
                    self._slots.give_back(task.tenant_id, task.handed_slot, task.task_id)
                # A slot freed between the look and the park would wake no one: look again.
                if self._slots.free(task.tenant_id, full.key, full.limit, now) is None:
                    log.info(
                        "task waits for a slot", extra={"task_id": task.task_id, "key": full.key}
                    )
                    return Processed(Outcome.WAITING, full.reason)
                return None, None  # parked, and a slot is free: read the task again, take it
            try:
                return self._repository.take_lease(opened, now, lease_until, claim), claim
            except SlotTaken:
                continue  # another attempt took one of those slots first: choose again
        return None, None

    def _decide(  # noqa: PLR0911, PLR0912 - one answer per way a delivery can end here
        self, message: TaskMessage, opened: Opened, now: datetime
    ) -> object:
        """A final answer for this delivery, `_RELOAD`, or None to claim an attempt."""
        snapshot = opened.snapshot
        if snapshot is None:
            log.info("delivery for an unknown task", extra={"task_id": message.task_id})
            return Processed(Outcome.SKIPPED, "missing")
        if TaskStatus(snapshot.status).terminal:
            return Processed(Outcome.SKIPPED, "terminal")
        if snapshot.status == TaskStatus.SCHEDULED:  # a stray delivery: the ticker queues it
            return Processed(Outcome.SKIPPED, "not due")
        if snapshot.status == TaskStatus.WAITING:
            # Waiting for children or a join: its work resumes when they report in.
            return Processed(Outcome.SKIPPED, "waiting")
        lease_until = snapshot.get("lease_until")
        if snapshot.status == TaskStatus.RUNNING and lease_until is not None and lease_until > now:
            # Acknowledged, not nacked: the holder acks its own delivery, and if it dies
            # the sweep republishes the expired lease. A nack here would count towards
            # Pub/Sub's dead-letter policy although the task is healthy.
            return Processed(Outcome.SKIPPED, "busy")
        if snapshot.get("cancel_requested"):
            # Cancelled while its worker was lost: it ends here, no attempt runs.
            error = TaskError(code="cancelled", message="the task was cancelled")
            return self._fail_unstarted(message, opened, error, now, status=TaskStatus.CANCELLED)
        if opened.problem is Problem.INTEGRITY:
            return self._fail_unstarted(
                message, opened, TaskError(code="integrity", message=opened.detail), now
            )
        if opened.problem is Problem.KEY_UNAVAILABLE:
            since = snapshot.get("key_wait_since") or now
            if now - since >= self._policy.key_grace:
                error = TaskError(
                    code="key-unavailable",
                    message=f"the key ring has lacked this task's key for over "
                    f"{self._policy.key_grace}; {opened.detail}",
                )
                return self._fail_unstarted(message, opened, error, now)
            if self._repository.note_start_problem(opened, Problem.KEY_UNAVAILABLE, now) is None:
                return _RELOAD
            raise KeyUnavailable(opened.detail)
        task = opened.task
        if opened.problem is Problem.MALFORMED or (task and not self._registry.knows(task.type)):
            why = (
                f"stored document does not decode ({opened.detail})"
                if task is None
                else f"no handler for task type {task.type!r} on this worker"
            )
            count = int(snapshot.get("start_failures", 0)) + 1
            if count >= self._policy.max_start_failures:
                error = TaskError(code="undeliverable", message=f"{why}, {count} deliveries")
                return self._fail_unstarted(message, opened, error, now)
            if self._repository.note_start_problem(opened, "undeliverable", now) is None:
                return _RELOAD
            raise StartDeferred(f"{why}; delivery {count} of {self._policy.max_start_failures}")
        assert task is not None
        if task.attempts_left <= 0:
            # A worker died holding the last attempt: nothing may run again.
            error = TaskError(
                code="lease-expired",
                message=f"attempt {task.attempts} of {task.max_attempts} "
                "stopped without finishing (worker lost)",
            )
            return self._fail_unstarted(message, opened, error, now)
        return None

    def _fail_unstarted(
        self,
        message: TaskMessage,
        opened: Opened,
        error: TaskError,
        now: datetime,
        *,
        status: TaskStatus = TaskStatus.FAILED,
    ) -> object:
        if not self._repository.fail_unstarted(opened, error, now, status=status):
            return _RELOAD
        if opened.task is not None:
            self._repository.events.flush(opened.task, status)
        if status is TaskStatus.CANCELLED:
            return Processed(Outcome.CANCELLED)
        log.warning(
            "task failed before an attempt", extra={"task_id": message.task_id, "code": error.code}
        )
        self._dead_letter(message, error.code)
        return Processed(Outcome.FAILED, error.code)

    def _run(self, message: TaskMessage, lease: Lease, lease_until: datetime) -> Processed:
        task = lease.task
        spec = AttemptSpec(
            task_type=task.type,
            payload=task.payload or {},
            task_id=task.task_id,
            tenant_id=task.tenant_id,
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            deadline=time.time() + task.timeout_s,
            inputs=self._inputs(task),
        )
        progress = ProgressWriter(self._repository, lease)
        watch = self._repository.watch_cancel(task.task_id)
        started = time.perf_counter()
        try:
            with tracing.span(
                f"run {task.type}",
                attributes={
                    "aia.task.type": task.type,
                    "aia.task.id": task.task_id,
                    "aia.attempt": task.attempts,
                    "aia.timeout_s": task.timeout_s,
                },
            ) as current:
                spec = dataclasses.replace(spec, traceparent=tracing.current_traceparent())
                outcome = self._runner.run(spec, cancelled=watch.requested, on_event=progress.offer)
                current.set_attribute("aia.attempt.error", outcome.error_code or "")
        finally:
            watch.stop()
            progress.close()
        duration = time.perf_counter() - started
        until = lease_until.timestamp() - 1.0
        error, retryable = _failure_of(outcome)
        stored: TaskStatus | None = None
        if error is None:
            try:
                result = loads_bounded(outcome.result_json or "null", "result")
                plan = FanOut.from_result(result)
                if plan is not None:
                    return self._fan_out(lease, plan)
                stored = self._repository.finish(
                    lease,
                    status=TaskStatus.SUCCEEDED,
                    result=result,
                    duration_s=duration,
                    until=until,
                    charged=outcome.charged,
                )
            except (NestingTooDeep, ResultTooLarge, InvalidFanOut) as exc:
                invalid = exc if not isinstance(exc, NestingTooDeep) else ResultInvalid(exc.detail)
                error, retryable = TaskError(code=invalid.code, message=invalid.detail), False
            else:
                return self._finished(message, lease.task, stored, duration)
        assert error is not None
        if error.code == "cancelled":
            status = TaskStatus.CANCELLED
        elif not retryable or task.attempts_left <= 0:
            status = TaskStatus.FAILED
        else:
            status = TaskStatus.QUEUED
        # The message is task data (sealed at rest): logs get its code only.
        log.warning(
            "attempt failed",
            extra={
                "task_id": task.task_id,
                "attempt": task.attempts,
                "code": error.code,
                "final": status.terminal,
            },
        )
        stored = self._repository.finish(
            lease,
            status=status,
            error=error,
            duration_s=duration,
            until=until,
            charged=outcome.charged,
        )
        return self._finished(message, lease.task, stored, duration, error)

    def _fan_out(self, lease: Lease, plan: FanOut) -> Processed:
        if self._joins is None:
            raise InvalidFanOut("this worker cannot fan out (no join store configured)")
        stored = self._joins.start(lease, plan, datetime.now(UTC))
        if stored is None:
            return Processed(Outcome.SKIPPED, "lease lost")
        log.info(
            "task waits for its children",
            extra={"task_id": lease.task.task_id, "children": len(plan.children)},
        )
        return Processed(Outcome.WAITING, f"{len(plan.children)} children")

    def _inputs(self, task: Task) -> dict[str, Any]:
        """What a continuation starts from: its parent's children, or the one that won."""
        source = task.inputs_from
        if not source:
            return {}
        kind, _, ref = source.partition(":")
        if kind == "children":
            children = self._repository.children_of(task.tenant_id, ref, open_fields=True)
            return {"children": [_outcome_of(child) for child in children]}
        if kind == "task":
            return {"winner": _outcome_of(self._repository.get(task.tenant_id, ref))}
        if kind == "deps":
            deps = [self._repository.get(task.tenant_id, d) for d in task.depends_on or []]
            if task.workflow_id is not None:
                # A workflow node starts only once every dependency succeeded: it reads
                # their results alone, by node name (shared/workflows).
                return {d.node or d.task_id: d.result for d in deps}
            return {"deps": {d.task_id: _outcome_of(d) for d in deps}}
        return {}

    def _finished(
        self,
        message: TaskMessage,
        task: Task,
        stored: TaskStatus | None,
        duration: float,
        error: TaskError | None = None,
    ) -> Processed:
        """The delivery's answer once the attempt's outcome is (or is not) stored."""
        if stored is None:
            return Processed(Outcome.SKIPPED, "lease lost")
        if stored.terminal:
            self._repository.events.flush(task, stored)
        if stored is TaskStatus.SUCCEEDED:
            # No line of its own: the delivery's one line says so, with the duration.
            return Processed(Outcome.SUCCEEDED, duration_s=duration)
        if stored is TaskStatus.CANCELLED:
            log.info("task cancelled", extra={"task_id": task.task_id})
            return Processed(Outcome.CANCELLED)
        code = error.code if error is not None else "failed"
        if stored is TaskStatus.FAILED:
            self._dead_letter(message, code)
            return Processed(Outcome.FAILED, code)
        raise TaskFailure(f"attempt {task.attempts} failed ({code}); will be retried")

    def _dead_letter(self, message: TaskMessage, reason: str) -> None:
        # At once, rather than after Pub/Sub's >= 5 deliveries; the failed state is
        # stored with an outbox flag first, so a publish lost here is swept later.
        # Ids only: the dead letter names the task, whose document says the rest.
        data = json.dumps(
            {"task_id": message.task_id, "tenant_id": message.tenant_id}, separators=(",", ":")
        ).encode()
        attributes = {"tenant_id": message.tenant_id, "task_id": message.task_id, "reason": reason}
        try:
            self._publisher.dead_letter(data, attributes)
            self._repository.dead_letter_sent(message.task_id)
        except AIAError as exc:
            log.warning(
                "dead letter left for the sweep",
                extra={"task_id": message.task_id, "code": exc.code},
            )
        except Exception:  # noqa: BLE001 - the outbox flag stays set; the sweep sends it
            log.warning("dead letter left for the sweep", extra={"task_id": message.task_id})


_RELOAD = object()


def _outcome_of(task: Task) -> dict[str, Any]:
    entry: dict[str, Any] = {"task_id": task.task_id, "status": task.status.value}
    if task.child_index is not None:
        entry["index"] = task.child_index
    if task.status is TaskStatus.SUCCEEDED:
        entry["result"] = task.result
    elif task.error is not None:
        entry["error"] = task.error.model_dump()
    return entry


def _failure_of(outcome: AttemptOutcome) -> tuple[TaskError | None, bool]:
    if outcome.ok:
        return None, False
    code = outcome.error_code or "handler-error"
    return TaskError(code=code, message=outcome.error_message[:MAX_ERROR_CHARS]), outcome.retryable
