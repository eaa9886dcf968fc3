"""Submitting a task: validate, store encrypted, publish its id."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared.config import Settings
from shared.errors import Unavailable, ValidationFailed
from shared.limits import check_depth
from shared.security.crypto import TaskSealer
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import Task, TaskMessage, TaskRequest, TaskStatus
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import IdempotencyClaim, TaskRepository

log = logging.getLogger("aia.submit")

MAX_IDEMPOTENCY_KEY = 255
# Checks a submit's webhook_url for its tenant (shared.webhooks): raises ValidationFailed.
WebhookUrlCheck = Callable[[str, str], None]


@dataclass(frozen=True)
class Submitted:
    task_id: str
    replayed: bool
    dispatched: bool


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
        webhook_check: WebhookUrlCheck | None = None,
    ) -> None:
        self._repository = repository
        self._publisher = publisher
        self._registry = registry
        self._sealer = sealer
        self._settings = settings
        self._webhook_check = webhook_check

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
        task = Task(
            task_id=uuid.uuid4().hex,
            tenant_id=tenant_id,
            type=request.type,
            status=TaskStatus.QUEUED,
            payload=request.payload,
            max_attempts=request.max_attempts,
            timeout_s=request.timeout_s,
            webhook_url=request.webhook_url,
            notify=request.webhook_url is not None,
            created_at=now,
            updated_at=now,
        )
        created = self._repository.create(task, claim)
        if created.replayed:
            # The original answer, including a dispatch that was deferred.
            return Submitted(
                created.task_id, replayed=True, dispatched=not created.dispatch_pending
            )
        return Submitted(task.task_id, replayed=False, dispatched=self._dispatch(task))

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
        task, queued = self._repository.replay(tenant_id, task_id, datetime.now(UTC))
        if not queued:
            # Already queued or running again: the earlier replay's dispatch stands.
            return Replayed(task, dispatched=not task.dispatch_pending)
        return Replayed(task, dispatched=self._dispatch(task))
