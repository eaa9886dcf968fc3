"""The webhook outbox: an event staged in the commit that finishes a task, published after it.

`stage` runs inside the batch that makes a task terminal and adds one document,
`webhook_events/{event_id}`, only when someone will hear of it: the tenant has
an active endpoint subscribed to the event type, or the task named its own
`webhook_url`. Which endpoints a tenant has is read once per tenant per
`AIA_WEBHOOK_CACHE_S` (at most 30 s) per instance, so a tenant without webhooks
costs nothing per task beyond that cached lookup.

A cache may be stale: it can say "no endpoint" for up to 30 s after one was
registered. Such events are not lost: every new endpoint is *caught up* by the
sweep once that window (plus a margin) has passed, creating the events of the
tenant's tasks that finished in it (`Sweeper.catch_up`). The bound, then: an
endpoint receives every event of every task that finished after it was
registered; those in its first 35 s may arrive up to a sweep interval later.

`flush` publishes the event id once the commit returned. If the function dies
in between, or the publish fails, the sweep republishes events not fanned out
within `EVENT_GRACE`. Delivery is at least once; receivers deduplicate on
`webhook-id`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import tracing
from shared.clients import WEBHOOK_LOOKUP, Deadline
from shared.config import WEBHOOK_CACHE_MAX_S
from shared.tasks.models import Task, TaskStatus
from shared.webhooks.models import (
    TASK_EVENTS,
    WORKFLOW_FINISHED,
    Endpoint,
    EndpointKind,
    EndpointStatus,
    WebhookEvent,
    WebhookMessage,
    event_id_of,
    workflow_event_id,
)
from shared.webhooks.store import FirestoreWebhookStore, event_document

log = logging.getLogger("aia.webhooks")

CATCHUP_MARGIN_S = 5.0
CATCHUP_WINDOW = timedelta(seconds=WEBHOOK_CACHE_MAX_S + CATCHUP_MARGIN_S)
# The flush's own fan-out (two attempts of at most 15 s each, 5 s apart) ends well
# within this; only then does the sweep republish an event.
EVENT_GRACE = timedelta(seconds=120)
MAX_CACHED_TENANTS = 10_000
_MAX_REMEMBERED = 1_000


class EndpointDirectory:
    """Per instance: the event types each tenant's active endpoints want, trusted for `ttl_s`."""

    def __init__(
        self,
        load: Callable[[str], list[Endpoint]],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s > WEBHOOK_CACHE_MAX_S:
            raise ValueError(f"the catch-up covers {WEBHOOK_CACHE_MAX_S:g} s of staleness at most")
        self._load = load
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()

    def wanted(self, tenant_id: str) -> frozenset[str]:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(tenant_id)
            if hit is not None and now - hit[0] < self._ttl_s:
                return hit[1]
        endpoints = self._load(tenant_id)
        wanted = frozenset(
            event
            for endpoint in endpoints
            if endpoint.kind is EndpointKind.ENDPOINT and endpoint.status is EndpointStatus.ACTIVE
            for event in endpoint.events
        )
        with self._lock:
            self._cache[tenant_id] = (now, wanted)
            self._cache.move_to_end(tenant_id)
            while len(self._cache) > MAX_CACHED_TENANTS:
                self._cache.popitem(last=False)
        return wanted


class Notifier:
    """Publishes event and delivery ids to the webhook topic; reports failure, never raises."""

    def __init__(self, client: Callable[[], Any], topic: str, *, wait_s: float) -> None:
        # A factory: functions that never publish (task_status) never build a publisher.
        self._client = client
        self._topic = topic
        self._deadline = Deadline(attempt_s=wait_s, total_s=wait_s)

    def event(self, tenant_id: str, event_id: str) -> bool:
        return self._send(WebhookMessage(tenant_id=tenant_id, event_id=event_id))

    def delivery(self, tenant_id: str, delivery_id: str) -> bool:
        return self._send(WebhookMessage(tenant_id=tenant_id, delivery_id=delivery_id))

    def _send(self, message: WebhookMessage) -> bool:
        data = json.dumps(message.model_dump(exclude_none=True), separators=(",", ":")).encode()
        try:
            self._client().publish(
                self._topic, data, {"tenant_id": message.tenant_id}, deadline=self._deadline
            )
        except Exception:  # noqa: BLE001 - the outbox or the due record stays; the sweep sends it
            log.warning(
                "webhook publish failed; left for the sweep",
                extra={"event_id": message.event_id, "delivery_id": message.delivery_id},
            )
            return False
        return True


class WebhookEvents:
    """`TaskEvents` for webhooks (see the module docstring)."""

    def __init__(
        self,
        directory: EndpointDirectory,
        store: FirestoreWebhookStore,
        notifier: Notifier,
        *,
        retention: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._directory = directory
        self._store = store
        self._notifier = notifier
        self._retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        # task id -> (tenant, event id) staged on this instance, for the flush after the commit.
        self._staged: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        event_type = TASK_EVENTS.get(status)
        if event_type is None:
            return
        if not task.notify and not self._subscribed(task.tenant_id, event_type):
            return
        now = self._clock()
        # The repository hands over the task as this commit records it.
        finished_at = task.finished_at or task.updated_at
        event = WebhookEvent(
            event_id=event_id_of(task.task_id, finished_at),
            tenant_id=task.tenant_id,
            task_id=task.task_id,
            type=event_type,
            finished_at=finished_at,
            per_task=task.notify,
            created_at=now,
            fanout_due_at=now + EVENT_GRACE,
            traceparent=tracing.current_traceparent() or task.traceparent,
        )
        # `set`: a retried commit stages the same id with the same content.
        batch.set(
            self._store.event_ref(event.event_id), event_document(event, now + self._retention)
        )
        with self._lock:
            self._staged[task.task_id] = (task.tenant_id, event.event_id)
            self._staged.move_to_end(task.task_id)
            while len(self._staged) > _MAX_REMEMBERED:
                self._staged.popitem(last=False)

    def flush(self, task: Task, status: TaskStatus) -> None:
        with self._lock:
            staged = self._staged.pop(task.task_id, None)
        if staged is None:
            return
        tenant_id, event_id = staged
        try:
            self._notifier.event(tenant_id, event_id)
        except Exception:  # flush never raises: the sweep has the outbox
            log.warning("webhook flush failed", extra={"event_id": event_id}, exc_info=True)

    def wants_workflow_finished(self, tenant_id: str) -> bool:
        """Whether any endpoint of the tenant hears workflow.finished (cached lookup)."""
        return self._subscribed(tenant_id, WORKFLOW_FINISHED)

    def workflow_finished(
        self, tenant_id: str, workflow_id: str, *, traceparent: str | None = None
    ) -> bool:
        """Record that a workflow's last node ended, once, and send it; True if this call did.

        Every detector (the last nodes' follow-ups, racing; the reconciler) stages
        the same event id with `create`, so exactly one succeeds.
        """
        if not self.wants_workflow_finished(tenant_id):
            return False
        now = self._clock()
        event = WebhookEvent(
            event_id=workflow_event_id(workflow_id),
            tenant_id=tenant_id,
            task_id=workflow_id,
            workflow_id=workflow_id,
            type=WORKFLOW_FINISHED,
            finished_at=now,
            created_at=now,
            fanout_due_at=now + EVENT_GRACE,
            traceparent=traceparent or tracing.current_traceparent(),
        )
        if not self._store.create_event(event, now + self._retention):
            return False
        try:
            self._notifier.event(tenant_id, event.event_id)
        except Exception:  # the sweep has the outbox
            log.warning("webhook flush failed", extra={"event_id": event.event_id}, exc_info=True)
        return True

    def _subscribed(self, tenant_id: str, event_type: str) -> bool:
        try:
            return event_type in self._directory.wanted(tenant_id)
        except Exception:  # an unanswered lookup must not lose an event
            log.warning(
                "webhook endpoint lookup failed; staging the event anyway",
                extra={"tenant_id": tenant_id},
                exc_info=True,
            )
            return True


def directory_loader(store: FirestoreWebhookStore) -> Callable[[str], list[Endpoint]]:
    return lambda tenant_id: store.tenant_endpoints(tenant_id, WEBHOOK_LOOKUP)
