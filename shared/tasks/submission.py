"""Submitting a task: validate, store encrypted, publish its id (or leave it `scheduled`)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.config import Settings
from shared.errors import (
    BudgetExhausted,
    NotFound,
    RateLimited,
    StagedConflict,
    Unavailable,
    ValidationFailed,
)
from shared.limits import check_depth
from shared.security.crypto import TaskSealer
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import (
    MAX_DELAY_S,
    CreatedTask,
    Task,
    TaskMessage,
    TaskRequest,
    TaskStatus,
)
from shared.tasks.registry import TaskRegistry, integral_floats_as_ints
from shared.tasks.repository import Created, IdempotencyClaim, TaskRepository

if TYPE_CHECKING:
    from shared.flow.admission import Admission
    from shared.workflows.joins import Joins

log = logging.getLogger("aia.submit")

MAX_IDEMPOTENCY_KEY = 255
# A start this close (or past) is now: the ticker would only add its own delay.
DUE_NOW = timedelta(seconds=1)
# Checks a submit's webhook_url for its tenant (shared.webhooks): raises ValidationFailed.
WebhookUrlCheck = Callable[[str, str], None]
# A submit whose commit lost a budget shard or a rate slot to another submit plans again.
MAX_HOLD_CONFLICTS = 40


@dataclass(frozen=True)
class Submitted:
    task_id: str
    replayed: bool
    dispatched: bool
    waiting: bool = False  # stored waiting for its dependencies
    run_at: datetime | None = None  # stored `scheduled`, not published: the ticker queues it
    headers: dict[str, str] = field(default_factory=dict)  # flow control's (RateLimit fields)

    @property
    def status(self) -> TaskStatus:
        if self.waiting:
            return TaskStatus.WAITING
        return TaskStatus.QUEUED if self.run_at is None else TaskStatus.SCHEDULED


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
        # The envelope strictly, as JSON Schema reads it (a bool is no integer, "3" no
        # number); the payload is checked against its type's model below.
        envelope = {k: v for k, v in body.items() if k != "payload"}
        request = TaskRequest.model_validate_json(
            json.dumps({**integral_floats_as_ints(envelope), "payload": {}}), strict=True
        )
        if "payload" not in body or not isinstance(body["payload"], dict):
            request = TaskRequest.model_validate(body)  # names the payload's own problem
        request = request.model_copy(update={"payload": body["payload"]})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(f"{field}: {first['msg']}", field=field) from exc
    task_type = registry.get(request.type, include_diagnostic=diagnostic)
    registry.parse_payload(task_type, request.payload)
    return request


def start_of(request: TaskRequest, now: datetime) -> datetime | None:
    """When the task should start (UTC), or None to start now."""
    if request.run_at is not None and request.delay_s is not None:
        raise ValidationFailed("give run_at or delay_s, not both", field="delay_s")
    if request.run_at is not None:
        # A difference, not astimezone(UTC): a valid time at the calendar's edge
        # (0001-01-01T00:00+05:00) has no UTC twin, but is simply in the past.
        ahead, field = request.run_at - now, "run_at"
    elif request.delay_s is not None:
        ahead, field = timedelta(seconds=request.delay_s), "delay_s"
    else:
        return None
    if ahead > timedelta(seconds=MAX_DELAY_S):
        raise ValidationFailed(f"{field} is more than 365 days ahead", field=field)
    return now + ahead if ahead > DUE_NOW else None


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
        dependencies: Joins | None = None,
        webhook_check: WebhookUrlCheck | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._registry = registry
        self._sealer = sealer
        self._settings = settings
        self._dependencies = dependencies
        self._webhook_check = webhook_check
        self._admission = admission  # None: no flow control (rate limits, budgets)

    def submit(self, tenant_id: str, body: Any, idempotency_key: str | None = None) -> Submitted:
        request = parse_request(body, self._registry, diagnostic=self._settings.diagnostic_tasks)
        if request.webhook_url is not None:
            if self._webhook_check is None:
                raise ValidationFailed("webhook_url: webhooks are not enabled", field="webhook_url")
            self._webhook_check(tenant_id, request.webhook_url)
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
        run_at = start_of(request, now)
        if request.depends_on and run_at is not None:
            raise ValidationFailed(
                "a task starts when its dependencies succeeded, or at run_at: not both",
                field="depends_on",
            )
        deps = self._dependencies_of(tenant_id, request.depends_on)
        task = Task(
            task_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            type=request.type,
            status=(
                TaskStatus.WAITING
                if deps
                else TaskStatus.QUEUED
                if run_at is None
                else TaskStatus.SCHEDULED
            ),
            payload=request.payload,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            webhook_url=request.webhook_url,
            notify=request.webhook_url is not None,
            created_at=now,
            updated_at=now,
            depends_on=deps or None,
            blocked_by=f"tasks:{len(deps)}" if deps else None,
            inputs_from="deps" if deps else None,
            run_at=run_at,
            concurrency_key=request.concurrency_key,
            max_running=(request.max_running or 1) if request.concurrency_key else None,
            priority=request.priority,
        )
        joins = self._dependencies
        extra = joins.stage_dependents(task) if deps and joins is not None else None
        try:
            created, flow = self._create(task, claim, extra)
        except (BudgetExhausted, RateLimited):
            # Refused before anything was written; an earlier accepted submit with this
            # Idempotency-Key still answers as itself.
            prior = self._repository.replayed(claim, now) if claim is not None else None
            if prior is None:
                raise
            created, flow = prior, {}
        if created.replayed:
            # The original answer, including a dispatch that was deferred.
            return Submitted(
                created.task_id,
                replayed=True,
                dispatched=not created.dispatch_pending,
                run_at=created.run_at,
                headers=flow,
            )
        if deps and joins is not None:
            # Published when its dependencies succeed; some may have already.
            joins.dependencies_created(task)
            return Submitted(
                task.task_id, replayed=False, dispatched=True, waiting=True, headers=flow
            )
        if run_at is not None:
            # Stored `scheduled` and not published: the ticker queues it when due. Its
            # document must never travel as a fresh task's (that would start it now).
            return Submitted(
                task.task_id, replayed=False, dispatched=True, run_at=run_at, headers=flow
            )
        return Submitted(
            task.task_id,
            replayed=False,
            dispatched=self._dispatch(task, created.fresh),
            headers=flow,
        )

    def _create(
        self, task: Task, claim: IdempotencyClaim | None, extra: Callable[[Any], None] | None
    ) -> tuple[Created, dict[str, str]]:
        """Store the task with what flow control stages (rate slots, budget hold): one commit."""
        if self._admission is None:
            return self._repository.create(task, claim, extra=extra), {}
        admitted = self._admission.admit(task.tenant_id, task.type)
        for _ in range(MAX_HOLD_CONFLICTS):
            reservation = self._admission.reserve(admitted, task.task_id)
            held = task.model_copy(update=reservation.fields) if reservation.fields else task
            try:
                created = self._repository.create(held, claim, reservation.writes, extra=extra)
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

    def _dependencies_of(self, tenant_id: str, depends_on: list[str]) -> list[str]:
        """The dependencies, each a task of this tenant; a 422 naming the first that is not."""
        unique = list(dict.fromkeys(depends_on))
        for position, dep in enumerate(unique):
            try:
                self._repository.get(tenant_id, dep)
            except NotFound:
                raise ValidationFailed(
                    f"depends_on[{position}]: no task {dep!r}", field=f"depends_on.{position}"
                ) from None
        if unique and self._dependencies is None:
            raise ValidationFailed("this deployment takes no dependencies", field="depends_on")
        return unique

    def _dispatch(self, task: Task, fresh: CreatedTask | None = None) -> bool:
        """Publish the task's id; on failure flag it for the sweep and say it was deferred."""
        try:
            self._publisher.publish(
                TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id, created=fresh),
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

    def cancel(self, tenant_id: str, task_id: str) -> Task:
        """Cancel a task: it never starts if it has not, and a running attempt is told to stop."""
        return self._repository.cancel(tenant_id, task_id, datetime.now(UTC))
