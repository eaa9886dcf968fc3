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

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

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
from shared.limits import loads_bounded
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import TaskError, TaskMessage, TaskStatus
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import Lease, Opened, Problem, TaskRepository
from shared.tasks.runner import STOP_GRACE_S, AttemptOutcome, AttemptRunner, AttemptSpec

log = logging.getLogger("aia.worker")

MAX_ERROR_CHARS = 4000
_MAX_CONFLICTS = 5


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # attempt failed; Pub/Sub redelivers with backoff
    FAILED = "failed"  # failed for good, dead-lettered
    SKIPPED = "skipped"  # duplicate, busy or unknown delivery: acknowledged


@dataclass(frozen=True)
class Processed:
    outcome: Outcome
    detail: str = ""


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
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._publisher = publisher
        self._runner = runner
        self._policy = policy or WorkerPolicy()

    def close(self) -> None:
        """Stop the handler processes this worker keeps."""
        self._runner.close()

    def process(self, message: TaskMessage) -> Processed:
        self._runner.warm()  # the child starts while the task is read
        for _ in range(_MAX_CONFLICTS):
            opened = self._repository.load(message.tenant_id, message.task_id)
            now = datetime.now(UTC)
            decided = self._decide(message, opened, now)
            if decided is _RELOAD:
                continue
            if decided is not None:
                assert isinstance(decided, Processed)
                return decided
            assert opened.task is not None
            lease_until = now + timedelta(seconds=self._policy.lease_seconds(opened.task.timeout_s))
            lease = self._repository.take_lease(opened, now, lease_until)
            if lease is None:
                continue  # another delivery moved the task on: look again
            return self._run(message, lease, lease_until)
        raise Unavailable(f"task {message.task_id} kept changing under this delivery")

    def _decide(  # noqa: PLR0911 - one answer per way a delivery can end here
        self, message: TaskMessage, opened: Opened, now: datetime
    ) -> object:
        """A final answer for this delivery, `_RELOAD`, or None to claim an attempt."""
        snapshot = opened.snapshot
        if snapshot is None:
            log.info("delivery for an unknown task", extra={"task_id": message.task_id})
            return Processed(Outcome.SKIPPED, "missing")
        if TaskStatus(snapshot.status).terminal:
            return Processed(Outcome.SKIPPED, "terminal")
        lease_until = snapshot.get("lease_until")
        if snapshot.status == TaskStatus.RUNNING and lease_until is not None and lease_until > now:
            # Acknowledged, not nacked: the holder acks its own delivery, and if it dies
            # the sweep republishes the expired lease. A nack here would count towards
            # Pub/Sub's dead-letter policy although the task is healthy.
            return Processed(Outcome.SKIPPED, "busy")
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
        self, message: TaskMessage, opened: Opened, error: TaskError, now: datetime
    ) -> object:
        if not self._repository.fail_unstarted(opened, error, now):
            return _RELOAD
        if opened.task is not None:
            self._repository.events.flush(opened.task, TaskStatus.FAILED)
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
        )
        started = time.perf_counter()
        outcome = self._runner.run(spec)
        duration = time.perf_counter() - started
        until = lease_until.timestamp() - 1.0
        error, retryable = _failure_of(outcome)
        if error is None:
            try:
                result = loads_bounded(outcome.result_json or "null", "result")
                owned = self._repository.finish(
                    lease,
                    status=TaskStatus.SUCCEEDED,
                    result=result,
                    duration_s=duration,
                    until=until,
                    charged=outcome.charged,
                )
            except (NestingTooDeep, ResultTooLarge) as exc:
                invalid = exc if isinstance(exc, ResultTooLarge) else ResultInvalid(exc.detail)
                error, retryable = TaskError(code=invalid.code, message=invalid.detail), False
            else:
                if not owned:
                    return Processed(Outcome.SKIPPED, "lease lost")
                self._repository.events.flush(task, TaskStatus.SUCCEEDED)
                log.info("task succeeded", extra={"task_id": task.task_id, "duration_s": duration})
                return Processed(Outcome.SUCCEEDED)
        assert error is not None
        final = not retryable or task.attempts_left <= 0
        # The message is task data (sealed at rest): logs get its code only.
        log.warning(
            "attempt failed",
            extra={
                "task_id": task.task_id,
                "attempt": task.attempts,
                "code": error.code,
                "final": final,
            },
        )
        owned = self._repository.finish(
            lease,
            status=TaskStatus.FAILED if final else TaskStatus.QUEUED,
            error=error,
            duration_s=duration,
            until=until,
            charged=outcome.charged,
        )
        if not owned:
            return Processed(Outcome.SKIPPED, "lease lost")
        if final:
            self._repository.events.flush(task, TaskStatus.FAILED)
            self._dead_letter(message, error.code)
            return Processed(Outcome.FAILED, error.code)
        raise TaskFailure(f"attempt {task.attempts} failed ({error.code}); will be retried")

    def _dead_letter(self, message: TaskMessage, reason: str) -> None:
        # At once, rather than after Pub/Sub's >= 5 deliveries; the failed state is
        # stored with an outbox flag first, so a publish lost here is swept later.
        data = json.dumps(message.model_dump(), separators=(",", ":")).encode()
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


def _failure_of(outcome: AttemptOutcome) -> tuple[TaskError | None, bool]:
    if outcome.ok:
        return None, False
    code = outcome.error_code or "handler-error"
    return TaskError(code=code, message=outcome.error_message[:MAX_ERROR_CHARS]), outcome.retryable
