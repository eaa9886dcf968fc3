"""Submitting a task: validate, store encrypted, publish its id."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.config import Settings
from shared.errors import (
    BudgetExhausted,
    RateLimited,
    StagedConflict,
    Unavailable,
    ValidationFailed,
)
from shared.limits import check_depth
from shared.security.crypto import TaskSealer
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import Task, TaskMessage, TaskRequest, TaskStatus
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import Created, IdempotencyClaim, TaskRepository

if TYPE_CHECKING:
    from shared.flow.admission import Admission

log = logging.getLogger("aia.submit")

MAX_IDEMPOTENCY_KEY = 255
# A submit whose commit lost a budget shard or a rate slot to another submit plans again.
MAX_HOLD_CONFLICTS = 40


@dataclass(frozen=True)
class Submitted:
    task_id: str
    replayed: bool
    dispatched: bool
    headers: dict[str, str] = field(default_factory=dict)  # flow control's (RateLimit fields)


@dataclass(frozen=True)
class Replayed:
    task: Task  # plain fields only: the submit function cannot open task data
    dispatched: bool


def parse_request(body: Any, registry: TaskRegistry, *, diagnostic: bool) -> TaskRequest:
    """Validate the envelope, then the payload against its type's model."""
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", field="body")
    # The HTTP edge checks bodies already; this use case is also called directly.
    check_depth(body, "body")
    try:
        request = TaskRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc
    task_type = registry.get(request.type, include_diagnostic=diagnostic)
    registry.parse_payload(task_type, request.payload)
    return request


def validate_idempotency_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationFailed(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            field="Idempotency-Key",
        )
    return key


class SubmitService:
    def __init__(
        self,
        repository: TaskRepository,
        publisher: TaskPublisher,
        registry: TaskRegistry,
        sealer: TaskSealer,
        settings: Settings,
        *,
        admission: Admission | None = None,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._registry = registry
        self._sealer = sealer
        self._settings = settings
        self._admission = admission  # None: no flow control (rate limits, budgets)

    def submit(self, tenant_id: str, body: Any, idempotency_key: str | None = None) -> Submitted:
        request = parse_request(body, self._registry, diagnostic=self._settings.diagnostic_tasks)
        claim = None
        if idempotency_key is not None:
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            key = validate_idempotency_key(idempotency_key)
            claim = IdempotencyClaim(
                tenant_id=tenant_id,
                doc_id=self._sealer.digest(f"idempotency\0{tenant_id}\0{key}".encode()),
                body_digest=self._sealer.digest(canonical),
            )
        now = datetime.now(UTC)
        task = Task(
            task_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            type=request.type,
            status=TaskStatus.QUEUED,
            payload=request.payload,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            created_at=now,
            updated_at=now,
        )
        try:
            created, flow_headers = self._create(task, claim)
        except (BudgetExhausted, RateLimited):
            # Refused before anything was written; an earlier accepted submit with this
            # Idempotency-Key still answers as itself.
            prior = self._repository.replayed(claim, now) if claim is not None else None
            if prior is None:
                raise
            created, flow_headers = prior, {}
        if created.replayed:
            # The original answer, including a dispatch that was deferred.
            return Submitted(
                created.task_id,
                replayed=True,
                dispatched=not created.dispatch_pending,
                headers=flow_headers,
            )
        return Submitted(
            task.task_id, replayed=False, dispatched=self._dispatch(task), headers=flow_headers
        )

    def _create(self, task: Task, claim: IdempotencyClaim | None) -> tuple[Created, dict[str, str]]:
        """Store the task with what flow control stages (rate slots, budget hold): one commit."""
        if self._admission is None:
            return self._repository.create(task, claim), {}
        admitted = self._admission.admit(task.tenant_id, task.type)
        for _ in range(MAX_HOLD_CONFLICTS):
            reservation = self._admission.reserve(admitted, task.task_id)
            held = task.model_copy(update=reservation.fields) if reservation.fields else task
            try:
                created = self._repository.create(held, claim, reservation.writes)
            except StagedConflict:
                # Another submit took that budget shard or rate slot first: plan again.
                self._admission.release(reservation, committed=False, raced=True)
                continue
            except BaseException:
                self._admission.release(reservation, committed=False)
                raise
            # A replayed Idempotency-Key committed nothing of this reservation.
            self._admission.release(
                reservation, committed=not created.replayed, commit_time=created.commit_time
            )
            return created, {} if created.replayed else reservation.headers
        raise Unavailable("the tenant's budget or rate limit is contended; retry shortly")

    def _dispatch(self, task: Task) -> bool:
        """Publish the task's id; on failure flag it for the sweep and say it was deferred."""
        try:
            self._publisher.publish(
                TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id),
                attributes={"type": task.type},
            )
        except Unavailable:
            # The task is stored: flag it so the redispatcher publishes it soon.
            log.warning("publish failed; task left for redispatch", extra={"task_id": task.task_id})
            try:
                self._repository.mark_dispatch_pending(task.task_id)
            except Exception:
                # The age-based sweep still finds it; the client's answer stays honest.
                log.exception("could not flag task for redispatch", extra={"task_id": task.task_id})
            return False
        return True

    def replay(self, tenant_id: str, task_id: str) -> Replayed:
        """Run a task that failed for good again, as fresh attempts of the same task."""
        rehold = self._admission.rehold if self._admission is not None else None
        task, queued = self._repository.replay(tenant_id, task_id, datetime.now(UTC), rehold)
        if not queued:
            # Already queued or running again: the earlier replay's dispatch stands.
            return Replayed(task, dispatched=not task.dispatch_pending)
        return Replayed(task, dispatched=self._dispatch(task))
