"""Processing one task delivery: claim, run the handler under its timeout, record the outcome.

Pub/Sub push is at-least-once; the lease claimed in Firestore makes each
attempt run once, and the attempt count lives in the task, not in Pub/Sub.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from shared.errors import (
    AIAError,
    NonRetryable,
    ResultTooLarge,
    TaskBusy,
    TaskFailure,
    TaskTimeout,
    Unavailable,
)
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import TaskError, TaskMessage
from shared.tasks.registry import TaskContext, TaskRegistry
from shared.tasks.repository import Claim, ClaimState, TaskRepository

log = logging.getLogger("aia.worker")

MAX_ERROR_CHARS = 4000


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # attempt failed; Pub/Sub redelivers with backoff
    FAILED = "failed"  # failed for good, dead-lettered
    SKIPPED = "skipped"  # duplicate or unknown delivery


@dataclass(frozen=True)
class Processed:
    outcome: Outcome
    detail: str = ""


def run_with_timeout(func: Any, timeout_s: float) -> Any:
    """Run `func()` in a daemon thread; TaskTimeout if it has not returned in time.

    Python cannot kill a thread: a timed-out handler keeps running in the
    background, but its result is discarded and the lease is released.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="aia-handler", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TaskTimeout(f"handler did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _ensure_json(result: Any) -> None:
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # Retrying would return the same value: the handler has a bug.
        raise NonRetryable(f"handler returned a value that is not JSON: {exc}") from exc


def _as_task_error(exc: BaseException) -> tuple[TaskError, bool]:
    """The stored error and whether the attempt may be retried."""
    if isinstance(exc, AIAError):
        return TaskError(code=exc.code, message=exc.detail[:MAX_ERROR_CHARS]), exc.retryable
    # An unexpected exception is treated as transient: the handler may succeed next time.
    message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    return TaskError(code="handler-error", message=message), True


class Worker:
    def __init__(
        self, repository: TaskRepository, registry: TaskRegistry, publisher: TaskPublisher
    ) -> None:
        self._repository = repository
        self._registry = registry
        self._publisher = publisher

    def process(self, message: TaskMessage) -> Processed:
        claim = self._repository.claim(message.tenant_id, message.task_id, datetime.now(UTC))
        if claim.state is ClaimState.BUSY:
            raise TaskBusy(f"task {message.task_id} is held by another delivery")
        if claim.state in (ClaimState.EXHAUSTED, ClaimState.CORRUPT):
            reason = "lease-expired" if claim.state is ClaimState.EXHAUSTED else "integrity"
            self._dead_letter(message, reason)
            return Processed(Outcome.FAILED, reason)
        if claim.state is not ClaimState.CLAIMED:
            log.info("delivery skipped", extra={"task_id": message.task_id, "state": claim.state})
            return Processed(Outcome.SKIPPED, claim.state.value)
        return self._run(message, claim)

    def _run(self, message: TaskMessage, claim: Claim) -> Processed:
        assert claim.task is not None
        task = claim.task
        started = time.perf_counter()
        try:
            task_type = self._registry.get(task.type)
            payload = self._registry.parse_payload(task_type, task.payload or {})
            context = TaskContext(task.task_id, task.tenant_id, task.attempts, task.max_attempts)
            result = run_with_timeout(lambda: task_type.handler(payload, context), task.timeout_s)
            _ensure_json(result)
        except Exception as exc:  # noqa: BLE001 - every handler failure is an attempt outcome
            return self._attempt_failed(message, claim, exc, time.perf_counter() - started)
        duration = time.perf_counter() - started
        try:
            owned = self._repository.succeed(claim, result, duration)
        except ResultTooLarge as exc:
            return self._attempt_failed(message, claim, exc, duration)
        if not owned:
            return Processed(Outcome.SKIPPED, "lease lost")
        log.info("task succeeded", extra={"task_id": task.task_id, "duration_s": duration})
        return Processed(Outcome.SUCCEEDED)

    def _attempt_failed(
        self, message: TaskMessage, claim: Claim, exc: Exception, duration: float
    ) -> Processed:
        assert claim.task is not None
        task = claim.task
        error, retryable = _as_task_error(exc)
        final = not retryable or task.attempts >= task.max_attempts
        # The message is task data (sealed at rest): logs get its code and type only.
        log.warning(
            "attempt failed",
            extra={
                "task_id": task.task_id,
                "attempt": task.attempts,
                "code": error.code,
                "exception": type(exc).__name__,
                "final": final,
            },
        )
        if not self._repository.fail(claim, error, duration, final=final):
            return Processed(Outcome.SKIPPED, "lease lost")
        if final:
            self._dead_letter(message, error.code)
            return Processed(Outcome.FAILED, error.code)
        raise TaskFailure(f"attempt {task.attempts} failed ({error.code}); will be retried")

    def _dead_letter(self, message: TaskMessage, reason: str) -> None:
        # Explicitly, at once: Pub/Sub's own dead-lettering needs >= 5 deliveries.
        # The task's failed state is already stored; a lost dead letter is logged, not retried.
        data = json.dumps(message.model_dump(), separators=(",", ":")).encode()
        attributes = {"tenant_id": message.tenant_id, "task_id": message.task_id, "reason": reason}
        try:
            self._publisher.dead_letter(data, attributes)
        except Unavailable:
            log.exception("dead-letter publish failed", extra={"task_id": message.task_id})
