"""Webhook models, named by direction of travel: requests in, stored, views out, messages."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from shared.deferred import DeferredModel
from shared.tasks.models import TaskStatus
from shared.webhooks.signing import Scheme

# What an endpoint may subscribe to: a task's end, and a workflow's (once its last
# node ended; the body is the workflow's view).
WORKFLOW_FINISHED = "workflow.finished"
EventType = Literal["task.succeeded", "task.failed", "task.cancelled", "workflow.finished"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
TASK_EVENTS: dict[TaskStatus, str] = {
    TaskStatus.SUCCEEDED: "task.succeeded",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
}
MAX_ENDPOINTS_PER_TENANT = 20
ENDPOINT_ID_PATTERN = r"^(ep|tk)_[0-9a-f]{32}$"
DELIVERY_ID_PATTERN = r"^dl_[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EndpointKind(StrEnum):
    ENDPOINT = "endpoint"  # a URL registered for event types
    TASK = "task"  # the tenant's key signing deliveries to a submit's own `webhook_url`


class EndpointStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # an attempt is due at next_attempt_at (or running)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # refused, or every scheduled attempt failed: replayable
    CANCELLED = "cancelled"  # its endpoint was deleted or disabled before it went out


class EndpointRequest(DeferredModel):
    """What a tenant registers."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    # An enum in the schema, so a client (and the OpenAPI document) knows the names.
    events: list[EventType] = Field(
        min_length=1, max_length=len(EVENT_TYPES), json_schema_extra={"uniqueItems": True}
    )
    signature: Scheme = Scheme.V1
    description: str | None = Field(default=None, max_length=200)

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("events must not repeat")
        return events


class SigningKeyRequest(DeferredModel):
    """The tenant's key for per-task `webhook_url` deliveries."""

    model_config = ConfigDict(extra="forbid")

    signature: Scheme = Scheme.V1


class StoredSecret(DeferredModel):
    """One signing key of an endpoint, sealed under its own data key (never stored plain)."""

    secret_id: str
    data_key: bytes  # wrapped by the key ring, bound to tenant and endpoint
    sealed: bytes  # the key material, AES-GCM under that data key
    public_key: str | None = None  # whpk_..., v1a only: public by nature
    created_at: datetime
    expires_at: datetime | None = None  # set when a rotation replaced it

    def signs_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


class Endpoint(DeferredModel):
    """An endpoint as stored (plain fields; its secrets stay sealed here)."""

    endpoint_id: str
    tenant_id: str
    kind: EndpointKind = EndpointKind.ENDPOINT
    url: str | None = None
    events: tuple[str, ...] = ()
    signature: Scheme
    description: str | None = None
    status: EndpointStatus = EndpointStatus.ACTIVE
    disabled_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    secrets: tuple[StoredSecret, ...] = ()

    def receives(self, event_type: str, finished_at: datetime) -> bool:
        """Subscribed, active, and registered before the task finished."""
        return (
            self.kind is EndpointKind.ENDPOINT
            and self.status is EndpointStatus.ACTIVE
            and event_type in self.events
            and self.created_at <= finished_at
        )

    def signing(self, now: datetime) -> list[StoredSecret]:
        """The secrets that sign now, newest first."""
        live = [s for s in self.secrets if s.signs_at(now)]
        return sorted(live, key=lambda s: s.created_at, reverse=True)


class SigningKeyView(DeferredModel):
    id: str
    created_at: datetime
    expires_at: datetime | None = None
    public_key: str | None = None


class EndpointView(DeferredModel):
    """What a tenant reads back: never a secret."""

    id: str
    kind: EndpointKind
    url: str | None
    events: list[str]
    signature: Scheme
    description: str | None = None
    status: EndpointStatus
    disabled_reason: str | None = None
    created_at: datetime
    signing_keys: list[SigningKeyView]

    @classmethod
    def of(cls, endpoint: Endpoint, now: datetime) -> EndpointView:
        return cls(
            id=endpoint.endpoint_id,
            kind=endpoint.kind,
            url=endpoint.url,
            events=list(endpoint.events),
            signature=endpoint.signature,
            description=endpoint.description,
            status=endpoint.status,
            disabled_reason=endpoint.disabled_reason,
            created_at=endpoint.created_at,
            signing_keys=[
                SigningKeyView(
                    id=s.secret_id,
                    created_at=s.created_at,
                    expires_at=s.expires_at,
                    public_key=s.public_key,
                )
                for s in endpoint.signing(now)
            ],
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True) | {"url": self.url}


class EndpointCreated(EndpointView):
    """A new endpoint or key: its secret (v1) or public key (v1a), shown this once."""

    secret: str | None = Field(default=None, description="`whsec_...`: shown only here")
    public_key: str | None = Field(default=None, description="The Ed25519 verifying key (v1a)")


class EndpointPage(DeferredModel):
    webhooks: list[EndpointView]
    next_page_token: str | None = Field(
        default=None, description="Present when there are more: pass it as `page_token`"
    )


class Attempt(DeferredModel):
    """One try at sending a delivery, as the attempt log shows it."""

    at: datetime
    outcome: str  # a Verdict, or "refused" for an address refused at send time
    response_code: int | None = None
    latency_ms: int
    error: str | None = None


class Delivery(DeferredModel):
    """One event to one endpoint (or to one task's own URL), with every attempt made."""

    delivery_id: str
    tenant_id: str
    endpoint_id: str
    event_id: str  # the webhook-id: the same for every attempt and replay
    event_type: str
    task_id: str
    per_task: bool = False
    status: DeliveryStatus
    attempt_count: int = 0
    schedule_base: int = 0  # attempts made before the last replay; the schedule restarts there
    next_attempt_at: datetime | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    reason: str | None = None
    replays: int = 0
    created_at: datetime
    updated_at: datetime
    traceparent: str | None = None  # the task's trace: each attempt's request continues it
    # A workflow.finished delivery: its body is this workflow's view (task_id names it too).
    workflow_id: str | None = None

    @property
    def failed_in_series(self) -> int:
        return self.attempt_count - self.schedule_base


class DeliveryView(DeferredModel):
    id: str
    webhook_id: str
    endpoint_id: str
    event_type: str
    task_id: str = Field(
        description="The event's subject: the task, or for workflow.finished the workflow"
    )
    workflow_id: str | None = Field(
        default=None, description="Set on workflow.finished deliveries: the workflow"
    )
    status: DeliveryStatus
    reason: str | None = None
    attempt_count: int
    next_attempt_at: datetime | None = None
    replays: int
    created_at: datetime
    attempts: list[Attempt]

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        return cls(
            id=delivery.delivery_id,
            webhook_id=delivery.event_id,
            endpoint_id=delivery.endpoint_id,
            event_type=delivery.event_type,
            task_id=delivery.task_id,
            workflow_id=delivery.workflow_id,
            status=delivery.status,
            reason=delivery.reason,
            attempt_count=delivery.attempt_count,
            next_attempt_at=delivery.next_attempt_at,
            replays=delivery.replays,
            created_at=delivery.created_at,
            attempts=delivery.attempts,
        )

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class DeliveryPage(DeferredModel):
    deliveries: list[DeliveryView]
    next_page_token: str | None = Field(
        default=None, description="Present when there are more: pass it as `page_token`"
    )


class DeliveryReplayed(DeliveryView):
    dispatch: Literal["deferred"] | None = Field(
        default=None, description="`deferred`: the sweep sends it within a minute"
    )


class WebhookEvent(DeferredModel):
    """The outbox record a terminal transition stages: what happened, not yet who hears it."""

    event_id: str
    tenant_id: str
    task_id: str
    type: str
    finished_at: datetime
    per_task: bool = False  # the task named its own webhook_url
    created_at: datetime
    fanout_due_at: datetime | None = None  # None once fanned out
    traceparent: str | None = None  # the span that finished the task (shared.tracing)
    # workflow.finished: the workflow whose last node ended (task_id names it too,
    # as the subject every event has).
    workflow_id: str | None = None


class WebhookMessage(DeferredModel):
    """What travels on the webhook topic: one id, never data."""

    model_config = ConfigDict(extra="ignore")

    tenant_id: str = Field(min_length=1, max_length=64)
    event_id: str | None = Field(default=None, pattern=r"^evt_[0-9a-f]{32}$")
    delivery_id: str | None = Field(default=None, pattern=DELIVERY_ID_PATTERN)

    @model_validator(mode="after")
    def _one_id(self) -> WebhookMessage:
        if (self.event_id is None) == (self.delivery_id is None):
            raise ValueError("a webhook message names an event or a delivery")
        return self


def workflow_event_id(workflow_id: str) -> str:
    """A workflow finishes once: every detector of its end stages this one id."""
    return "evt_" + hashlib.sha256(f"workflow\0{workflow_id}".encode()).hexdigest()[:32]


def event_id_of(task_id: str, finished_at: datetime) -> str:
    """One id per terminal transition of a task: the stage and the catch-up agree on it.

    A replayed task finishes again at another time, so it gets a new event.
    """
    micros = (finished_at - _EPOCH) // _MICROSECOND
    return "evt_" + hashlib.sha256(f"{task_id}\0{micros}".encode()).hexdigest()[:32]


def delivery_id_of(event_id: str, endpoint_id: str) -> str:
    """Deterministic, so a repeated fan-out finds its deliveries instead of doubling them."""
    return "dl_" + hashlib.sha256(f"{event_id}\0{endpoint_id}".encode()).hexdigest()[:32]


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH
