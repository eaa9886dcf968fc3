"""Delivering webhook events: fan an event out to its endpoints, retry on schedule, sweep.

A fan-out reads the tenant's endpoints afresh (no cache), sends each its first
attempt at once (and the 5 s retry in the same call), and then stores every
delivery with its attempt log and marks the event fanned out, in one commit. A
function that dies before that commit leaves the event to the sweep, which
fans it out again: the receiver may then see a delivery twice, always with the
same `webhook-id`.

Later retries are `next_attempt_at` in the delivery's document; the sweep
(every minute) publishes the ids of those due, and the attempt claims the
delivery with a conditional write first, so two messages never send it twice.
Each attempt writes its delivery once or twice, minutes apart at the least:
no document is written more than about once per second.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared import tracing
from shared.clients import WEBHOOK_DELIVERY
from shared.errors import IntegrityError, NotFound
from shared.security.crypto import TaskOpener
from shared.tasks.models import TaskStatus
from shared.webhooks.egress import Egress
from shared.webhooks.keys import open_key
from shared.webhooks.models import (
    TASK_EVENTS,
    Attempt,
    Delivery,
    DeliveryStatus,
    Endpoint,
    EndpointKind,
    EndpointStatus,
    WebhookEvent,
    WebhookMessage,
    delivery_id_of,
    event_id_of,
)
from shared.webhooks.outbox import CATCHUP_WINDOW, EVENT_GRACE, Notifier
from shared.webhooks.schedule import INLINE_MAX_S, RetryPolicy, Verdict, verdict_of
from shared.webhooks.signing import Scheme, webhook_headers
from shared.webhooks.store import FirestoreWebhookStore

log = logging.getLogger("aia.webhooks")

USER_AGENT = "AIA-Webhooks/1"
# An attempt's claim outlasts two 15 s sends and the 5 s between them.
CLAIM = timedelta(seconds=120)
# A message may arrive a moment before its delivery is due by this instance's clock.
DUE_TOLERANCE = timedelta(seconds=2)
SWEEP_BATCH = 200
CATCHUP_ENDPOINTS = 20
CATCHUP_PAGE = 500
MAX_PARALLEL_SENDS = 8


class TaskBodies(Protocol):
    """What a delivery sends, and where a task's own delivery goes."""

    def body(self, tenant_id: str, task_id: str) -> bytes:
        """The task view exactly as `GET /tasks/{id}` answers it; NotFound if gone."""

    def webhook_url(self, tenant_id: str, task_id: str) -> str | None: ...

    def workflow_body(self, tenant_id: str, workflow_id: str) -> bytes:
        """The workflow view exactly as `GET /workflows/{id}` answers it; NotFound if gone."""


@dataclass(frozen=True)
class Handled:
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class _Target:
    endpoint: Endpoint
    url: str | None  # None: a task's own delivery whose URL could not be read


class Deliverer:
    def __init__(
        self,
        store: FirestoreWebhookStore,
        tasks: TaskBodies,
        opener: TaskOpener,
        egress: Egress,
        *,
        signer_id: Callable[[str], str],
        retention: timedelta,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._opener = opener
        self._egress = egress
        self._signer_id = signer_id
        self._retention = retention
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._sleep = sleep

    def handle(self, message: WebhookMessage) -> Handled:
        if message.event_id is not None:
            return self.fan_out(message.tenant_id, message.event_id)
        assert message.delivery_id is not None
        return self.attempt(message.tenant_id, message.delivery_id)

    # -- fan-out -------------------------------------------------------------

    def fan_out(self, tenant_id: str, event_id: str) -> Handled:
        got = self._store.get_event(event_id)
        if got is None or got.value.tenant_id != tenant_id:
            return Handled("skipped", "unknown event")
        event: WebhookEvent = got.value
        if event.fanout_due_at is None:
            return Handled("skipped", "fanned out already")
        endpoints = self._store.tenant_endpoints(tenant_id, WEBHOOK_DELIVERY)
        targets = [
            _Target(e, e.url) for e in endpoints if e.receives(event.type, event.finished_at)
        ]
        if event.per_task:
            signer = self._signer(tenant_id, endpoints)
            targets.append(_Target(signer, self._tasks.webhook_url(tenant_id, event.task_id)))
        now = self._clock()
        body = b""
        try:
            if targets:
                body = self._body(tenant_id, event.task_id, event.workflow_id)
        except NotFound:
            targets = []  # expired before anyone heard of it: nothing to send
        fresh = [self._new_delivery(event, target, now) for target in targets]
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_SENDS, len(fresh)))) as pool:
            settled = list(pool.map(lambda t, d: self._series(t, d, body), targets, fresh))
        stored = self._store.record_fanout(event, settled, self._clock(), now + self._retention)
        self._disable_gone(settled)
        if not stored:
            return Handled("skipped", "another fan-out stored this event's deliveries")
        return Handled("fanned-out", f"{len(settled)} deliveries")

    def _body(self, tenant_id: str, task_id: str, workflow_id: str | None) -> bytes:
        if workflow_id is not None:
            return self._tasks.workflow_body(tenant_id, workflow_id)
        return self._tasks.body(tenant_id, task_id)

    def _signer(self, tenant_id: str, endpoints: list[Endpoint]) -> Endpoint:
        signer_id = self._signer_id(tenant_id)
        found = next((e for e in endpoints if e.endpoint_id == signer_id), None)
        if found is not None:
            return found
        # Deleted since the submit: the delivery is recorded as failed under its id.
        now = self._clock()
        return Endpoint(
            endpoint_id=signer_id,
            tenant_id=tenant_id,
            kind=EndpointKind.TASK,
            signature=Scheme.V1,
            created_at=now,
            updated_at=now,
        )

    def _new_delivery(self, event: WebhookEvent, target: _Target, now: datetime) -> Delivery:
        endpoint_id = target.endpoint.endpoint_id
        return Delivery(
            delivery_id=delivery_id_of(event.event_id, endpoint_id),
            tenant_id=event.tenant_id,
            endpoint_id=endpoint_id,
            event_id=event.event_id,
            event_type=event.type,
            task_id=event.task_id,
            per_task=target.endpoint.kind is EndpointKind.TASK,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            traceparent=event.traceparent,
            workflow_id=event.workflow_id,
        )

    # -- retries and replays -------------------------------------------------

    def attempt(self, tenant_id: str, delivery_id: str) -> Handled:
        got = self._store.get_delivery(delivery_id)
        if got is None or got.value.tenant_id != tenant_id:
            return Handled("skipped", "unknown delivery")
        delivery: Delivery = got.value
        now = self._clock()
        if delivery.status is not DeliveryStatus.PENDING:
            return Handled("skipped", f"delivery is {delivery.status}")
        if delivery.next_attempt_at is None or delivery.next_attempt_at > now + DUE_TOLERANCE:
            return Handled("skipped", "not due")
        version = self._store.claim_delivery(delivery_id, got.version, now + CLAIM, now)
        if version is None:
            return Handled("skipped", "claimed by another attempt")
        target, why = self._target_of(delivery)
        if target is None:
            settled = self._settle(delivery, DeliveryStatus.CANCELLED, why)
        else:
            try:
                body = self._body(tenant_id, delivery.task_id, delivery.workflow_id)
            except NotFound:
                settled = self._settle(delivery, DeliveryStatus.FAILED, "task-gone")
            else:
                settled = self._series(target, delivery, body)
        if not self._store.save_delivery(settled, version):
            log.warning("delivery changed during its attempt", extra={"delivery_id": delivery_id})
        self._disable_gone([settled])
        return Handled(str(settled.status), settled.reason or "")

    def _target_of(self, delivery: Delivery) -> tuple[_Target | None, str]:
        got = self._store.get_endpoint(delivery.endpoint_id, WEBHOOK_DELIVERY)
        if got is None:
            if delivery.per_task:
                return self._signer_target(delivery, None), ""
            return None, "webhook-deleted"
        endpoint: Endpoint = got.value
        if endpoint.status is EndpointStatus.DISABLED:
            return None, "webhook-disabled"
        if delivery.per_task:
            return self._signer_target(delivery, endpoint), ""
        return _Target(endpoint, endpoint.url), ""

    def _signer_target(self, delivery: Delivery, signer: Endpoint | None) -> _Target:
        endpoint = signer or self._signer(delivery.tenant_id, [])
        return _Target(endpoint, self._tasks.webhook_url(delivery.tenant_id, delivery.task_id))

    # -- sending -------------------------------------------------------------

    def _series(  # noqa: PLR0911 - one answer per way a series can end
        self, target: _Target, delivery: Delivery, body: bytes
    ) -> Delivery:
        """Attempts until one settles the delivery or the next is not due within seconds."""
        if target.url is None:
            return self._settle(delivery, DeliveryStatus.FAILED, "no-url")
        try:
            keys = [
                open_key(
                    self._opener,
                    delivery.tenant_id,
                    target.endpoint.endpoint_id,
                    target.endpoint.signature,
                    secret,
                )
                for secret in target.endpoint.signing(self._clock())
            ]
        except IntegrityError:
            return self._settle(delivery, DeliveryStatus.FAILED, "integrity")
        if not keys:
            return self._settle(delivery, DeliveryStatus.FAILED, "no-signing-key")
        while True:
            now = self._clock()
            timestamp = int(now.timestamp())
            headers = {
                **webhook_headers(delivery.event_id, timestamp, body, keys),
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "aia-event-type": delivery.event_type,
                "aia-delivery-id": delivery.delivery_id,
            }
            with tracing.span(
                "POST webhook",
                kind="CLIENT",
                traceparent=delivery.traceparent,
                attributes={
                    "http.request.method": "POST",
                    "aia.webhook.delivery_id": delivery.delivery_id,
                    "aia.webhook.event_type": delivery.event_type,
                    "aia.webhook.attempt": delivery.attempt_count + 1,
                },
            ) as current:
                # The receiver can join the task's trace (W3C Trace Context).
                tracing.inject(headers)
                headers.pop(tracing.GOOGLE_CLIENT_TRACEPARENT, None)
                response = self._egress.post(target.url, headers, body)
                tracing.set_attributes(current, {"http.response.status_code": response.status})
            verdict = verdict_of(response)
            attempt = Attempt(
                at=now,
                outcome="refused" if response.error == "refused-address" else verdict.value,
                response_code=response.status,
                latency_ms=round(response.latency_s * 1000),
                error=response.error and f"{response.error}: {response.detail}"[:300],
            )
            delivery = delivery.model_copy(
                update={
                    "attempts": [*delivery.attempts, attempt],
                    "attempt_count": delivery.attempt_count + 1,
                }
            )
            log.info(
                "webhook attempt",
                extra={
                    "delivery_id": delivery.delivery_id,
                    "attempt": delivery.attempt_count,
                    "verdict": verdict.value,
                    "response_code": response.status,
                },
            )
            if verdict is Verdict.SUCCEEDED:
                return self._settle(delivery, DeliveryStatus.SUCCEEDED, None)
            if verdict is Verdict.GONE:
                return self._settle(delivery, DeliveryStatus.FAILED, "gone")
            if verdict is Verdict.FAILED:
                return self._settle(delivery, DeliveryStatus.FAILED, f"http-{response.status}")
            delay = self._policy.delay_after(delivery.failed_in_series, response.retry_after_s)
            if delay is None:
                return self._settle(delivery, DeliveryStatus.FAILED, "retries-exhausted")
            if delay <= INLINE_MAX_S:
                self._sleep(delay)
                continue
            when = self._clock() + timedelta(seconds=delay)
            return delivery.model_copy(
                update={"next_attempt_at": when, "updated_at": self._clock(), "reason": None}
            )

    def _settle(self, delivery: Delivery, status: DeliveryStatus, reason: str | None) -> Delivery:
        return delivery.model_copy(
            update={
                "status": status,
                "reason": reason,
                "next_attempt_at": None,
                "updated_at": self._clock(),
            }
        )

    def _disable_gone(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.reason == "gone" and not delivery.per_task:
                # 410: the receiver wants no more; later deliveries to it are cancelled.
                self._store.disable_endpoint(delivery.endpoint_id, "gone", self._clock())
                log.info("webhook disabled on 410", extra={"endpoint_id": delivery.endpoint_id})


@dataclass(frozen=True)
class SweptWebhooks:
    events: int
    deliveries: int
    caught_up: int


class Sweeper:
    """Every minute: republish events not fanned out, deliveries due, and catch new endpoints up."""

    def __init__(
        self,
        store: FirestoreWebhookStore,
        notifier: Notifier,
        *,
        retention: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._retention = retention
        self._clock = clock

    def sweep(self) -> SweptWebhooks:
        now = self._clock()
        events = 0
        for found in self._store.events_due(now, SWEEP_BATCH):
            event: WebhookEvent = found.value
            # Postponed first, so the next sweep leaves it to this publish's fan-out.
            if self._store.postpone_event(event.event_id, found.version, now + EVENT_GRACE):
                events += self._notifier.event(event.tenant_id, event.event_id)
        deliveries = 0
        for delivery in self._store.deliveries_due(now, SWEEP_BATCH):
            # No write: the attempt claims the delivery, which also takes it off this query.
            deliveries += self._notifier.delivery(delivery.tenant_id, delivery.delivery_id)
        caught_up = self.catch_up(now)
        log.info(
            "webhook sweep",
            extra={"events": events, "deliveries": deliveries, "caught_up": caught_up},
        )
        return SweptWebhooks(events, deliveries, caught_up)

    def catch_up(self, now: datetime) -> int:
        """Events of tasks that finished while a new endpoint may have been cached as absent."""
        created = 0
        for found in self._store.catchups_due(now, CATCHUP_ENDPOINTS):
            endpoint: Endpoint = found.value
            created += self._catch_up(endpoint, now)
            self._store.update_endpoint(
                endpoint.endpoint_id, {"catchup_due_at": None}, found.version
            )
        return created

    def _catch_up(self, endpoint: Endpoint, now: datetime) -> int:
        start = endpoint.created_at
        end = start + CATCHUP_WINDOW
        missing: list[WebhookEvent] = []
        after: Any = None
        while True:
            page = self._store.tasks_finished_between(
                endpoint.tenant_id, start, end, CATCHUP_PAGE, after
            )
            for task in page:
                event_type = TASK_EVENTS.get(TaskStatus(task.status))
                if event_type is None or event_type not in endpoint.events:
                    continue
                missing.append(
                    WebhookEvent(
                        event_id=event_id_of(task.task_id, task.finished_at),
                        tenant_id=endpoint.tenant_id,
                        task_id=task.task_id,
                        type=event_type,
                        finished_at=task.finished_at,
                        per_task=task.notify,
                        created_at=now,
                        fanout_due_at=now + EVENT_GRACE,
                        traceparent=task.traceparent,
                    )
                )
            if len(page) < CATCHUP_PAGE:
                break
            after = (page[-1].finished_at, page[-1].task_id)
        if not missing:
            return 0
        expires = now + self._retention

        def create(event: WebhookEvent) -> bool:
            # Most exist (staged with their task); only those a stale cache skipped are new.
            if not self._store.create_event(event, expires):
                return False
            self._notifier.event(event.tenant_id, event.event_id)
            return True

        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            return sum(pool.map(create, missing))


class StatusBodies:
    """Bodies from the status use cases themselves, so a delivery says exactly what GET would."""

    def __init__(
        self, status: Any, db: Any, documents: Any, workflows: Callable[[], Any] | None = None
    ) -> None:
        self._status = status
        self._db = db
        self._documents = documents
        self._workflows = workflows  # built on first use: most deliveries are tasks'

    def workflow_body(self, tenant_id: str, workflow_id: str) -> bytes:
        if self._workflows is None:
            raise NotFound("this deployment has no workflows")
        view = self._workflows().get(tenant_id, workflow_id).to_json()
        return json.dumps(view, separators=(",", ":")).encode()

    def body(self, tenant_id: str, task_id: str) -> bytes:
        view = self._status.get(tenant_id, task_id).to_json()
        # As shared.http.json_response encodes it: the bytes GET /tasks/{id} answers.
        return json.dumps(view, separators=(",", ":")).encode()

    def webhook_url(self, tenant_id: str, task_id: str) -> str | None:
        from shared import queries

        snap = self._db.collection(queries.TASKS).document(task_id).get(**WEBHOOK_DELIVERY.kwargs())
        doc = snap.to_dict() if snap.exists else None
        if not doc or doc.get("tenant_id") != tenant_id or not doc.get("notify"):
            return None
        try:
            task = self._documents.decode(task_id, doc, open_fields=("webhook_url",))
        except IntegrityError:
            return None
        url = task.webhook_url
        return url if isinstance(url, str) else None
