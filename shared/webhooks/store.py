"""Webhook persistence on Firestore: endpoints, outbox events, deliveries with their attempt log.

As for tasks, no transaction: each read-modify-write is one read and one write
conditioned on the document's update time. Every query is built from a spec in
`shared.queries`, so Terraform's indexes are checked against it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import queries
from shared.clients import SWEEP_CALL, WEBHOOK_API, Deadline
from shared.errors import AIAError, BadRequest, Conflict
from shared.limits import loads_bounded
from shared.webhooks.models import (
    Delivery,
    Endpoint,
    StoredSecret,
    WebhookEvent,
)

MAX_PAGE_TOKEN_CHARS = 512
# An attempt log longer than this keeps its newest entries (replays can add many).
MAX_ATTEMPTS_LOGGED = 50
_TOKEN_ID = re.compile(r"^[a-z]{2,3}_[0-9a-f]{32}$")


@dataclass(frozen=True)
class Versioned:
    """A record as read, with the update time a conditional write names."""

    value: Any
    version: Any


@dataclass(frozen=True)
class FinishedTask:
    """A terminal task as the catch-up sees it: plain fields only."""

    task_id: str
    status: str
    finished_at: datetime
    notify: bool
    traceparent: str | None = None


def _google() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    return AlreadyExists, FailedPrecondition, NotFound


def encode_page_token(created_at: datetime, doc_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": doc_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    invalid = BadRequest("page_token is not a token this API issued", field="page_token")
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid
    try:
        data = loads_bounded(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), "page_token"
        )
        created = datetime.fromisoformat(data["c"])
        doc_id = data["i"]
    except (AIAError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise invalid from exc
    if not isinstance(doc_id, str) or not _TOKEN_ID.match(doc_id) or created.tzinfo is None:
        raise invalid
    return created, doc_id


def endpoint_document(endpoint: Endpoint, catchup_due_at: datetime | None) -> dict[str, Any]:
    doc = endpoint.model_dump(exclude={"endpoint_id", "secrets"})
    doc["secrets"] = [s.model_dump() for s in endpoint.secrets]
    doc["catchup_due_at"] = catchup_due_at
    return doc


def event_document(event: WebhookEvent, expires_at: datetime) -> dict[str, Any]:
    doc = event.model_dump(exclude={"event_id"})
    doc[queries.EXPIRES_AT] = expires_at
    return doc


def delivery_document(delivery: Delivery, expires_at: datetime) -> dict[str, Any]:
    doc = _delivery_fields(delivery)
    doc.update(
        {
            "tenant_id": delivery.tenant_id,
            "endpoint_id": delivery.endpoint_id,
            "event_id": delivery.event_id,
            "event_type": delivery.event_type,
            "task_id": delivery.task_id,
            "per_task": delivery.per_task,
            "created_at": delivery.created_at,
            "traceparent": delivery.traceparent,
            "workflow_id": delivery.workflow_id,
            queries.EXPIRES_AT: expires_at,
        }
    )
    return doc


def _delivery_fields(delivery: Delivery) -> dict[str, Any]:
    """The fields an attempt or a replay changes."""
    return {
        "status": delivery.status.value,
        "attempt_count": delivery.attempt_count,
        "schedule_base": delivery.schedule_base,
        "next_attempt_at": delivery.next_attempt_at,
        "attempts": [a.model_dump() for a in delivery.attempts[-MAX_ATTEMPTS_LOGGED:]],
        "reason": delivery.reason,
        "replays": delivery.replays,
        "updated_at": delivery.updated_at,
    }


def _endpoint(doc_id: str, doc: dict[str, Any]) -> Endpoint:
    values = dict(doc)
    values["endpoint_id"] = doc_id
    values["secrets"] = [StoredSecret.model_validate(s) for s in doc.get("secrets") or []]
    values["events"] = tuple(doc.get("events") or ())
    return Endpoint.model_validate(values)


def _delivery(doc_id: str, doc: dict[str, Any]) -> Delivery:
    return Delivery.model_validate({**doc, "delivery_id": doc_id})


def _event(doc_id: str, doc: dict[str, Any]) -> WebhookEvent:
    return WebhookEvent.model_validate({**doc, "event_id": doc_id})


class FirestoreWebhookStore:
    def __init__(self, db: Any, *, deadline: Deadline = WEBHOOK_API) -> None:
        self._db = db
        self._deadline = deadline
        self._endpoints = db.collection(queries.WEBHOOK_ENDPOINTS)
        self._events = db.collection(queries.WEBHOOK_EVENTS)
        self._deliveries = db.collection(queries.WEBHOOK_DELIVERIES)

    def _after(self, version: Any) -> Any:
        return self._db.write_option(last_update_time=version)

    def _query(self, spec: queries.QuerySpec, values: dict[str, Any]) -> Any:
        from google.cloud.firestore import FieldFilter

        query = self._db.collection(spec.collection)
        for name in spec.equals:
            query = query.where(filter=FieldFilter(name, "==", values[name]))
        for name, direction in spec.order:
            query = query.order_by(name, direction=direction)
        return query

    def _due(self, spec: queries.QuerySpec, now: datetime) -> Any:
        from google.cloud.firestore import FieldFilter

        assert spec.range_field is not None
        query = self._query(spec, {})
        return query.where(filter=FieldFilter(spec.range_field, "<=", now))

    def _page(
        self, spec: queries.QuerySpec, values: dict[str, Any], limit: int, token: str | None
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        query = self._query(spec, values)
        if token:
            created, last_id = decode_page_token(token)
            last = self._db.collection(spec.collection).document(last_id)
            cursor = {"created_at": created, "__name__": last}
            query = query.start_after(cursor)
        snaps = list(query.limit(limit + 1).stream(**self._deadline.kwargs()))
        items = [(s.id, s.to_dict() or {}) for s in snaps[:limit]]
        next_token = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            next_token = encode_page_token(last.get("created_at"), last.id)
        return items, next_token

    # -- endpoints -----------------------------------------------------------

    def create_endpoint(self, endpoint: Endpoint, catchup_due_at: datetime | None) -> None:
        already_exists, _, _ = _google()
        try:
            self._endpoints.document(endpoint.endpoint_id).create(
                endpoint_document(endpoint, catchup_due_at), **self._deadline.kwargs()
            )
        except already_exists as exc:
            raise Conflict(f"webhook {endpoint.endpoint_id} exists already") from exc

    def get_endpoint(self, endpoint_id: str, deadline: Deadline | None = None) -> Versioned | None:
        snap = self._endpoints.document(endpoint_id).get(**(deadline or self._deadline).kwargs())
        if not snap.exists:
            return None
        return Versioned(_endpoint(snap.id, snap.to_dict() or {}), snap.update_time)

    def tenant_endpoints(self, tenant_id: str, deadline: Deadline | None = None) -> list[Endpoint]:
        query = self._query(queries.TENANT_ENDPOINTS, {"tenant_id": tenant_id})
        snaps = query.limit(100).stream(**(deadline or self._deadline).kwargs())
        return [_endpoint(s.id, s.to_dict() or {}) for s in snaps]

    def count_endpoints(self, tenant_id: str) -> int:
        query = self._query(queries.TENANT_ENDPOINTS, {"tenant_id": tenant_id})
        result = query.count(alias="n").get(**self._deadline.kwargs())
        return int(result[0][0].value) if result and result[0] else 0

    def list_endpoints(
        self, tenant_id: str, limit: int, token: str | None
    ) -> tuple[list[Endpoint], str | None]:
        items, next_token = self._page(
            queries.LIST_ENDPOINTS, {"tenant_id": tenant_id}, limit, token
        )
        return [_endpoint(doc_id, doc) for doc_id, doc in items], next_token

    def delete_endpoint(self, endpoint_id: str, version: Any) -> bool:
        _, failed_precondition, not_found = _google()
        try:
            self._endpoints.document(endpoint_id).delete(
                option=self._after(version), **self._deadline.kwargs()
            )
        except (failed_precondition, not_found):
            return False
        return True

    def update_endpoint(self, endpoint_id: str, changes: dict[str, Any], version: Any) -> bool:
        """A conditional update; False if the endpoint changed (or went) since it was read."""
        _, failed_precondition, not_found = _google()
        try:
            self._endpoints.document(endpoint_id).update(
                changes, option=self._after(version), **self._deadline.kwargs()
            )
        except (failed_precondition, not_found):
            return False
        return True

    def replace_secrets(
        self, endpoint_id: str, secrets: Iterable[StoredSecret], version: Any, now: datetime
    ) -> bool:
        changes = {"secrets": [s.model_dump() for s in secrets], "updated_at": now}
        return self.update_endpoint(endpoint_id, changes, version)

    def disable_endpoint(self, endpoint_id: str, reason: str, now: datetime) -> None:
        _, _, not_found = _google()
        try:
            self._endpoints.document(endpoint_id).update(
                {
                    "status": "disabled",
                    "disabled_reason": reason,
                    "disabled_at": now,
                    "updated_at": now,
                },
                **self._deadline.kwargs(),
            )
        except not_found:
            return  # deleted meanwhile: nothing left to disable

    def endpoints_page(self, after: str | None, limit: int) -> list[Versioned]:
        """Every tenant's endpoints in id order, a page at a time (key ring rotation)."""
        query = self._query(queries.ENDPOINTS_IN_ID_ORDER, {})
        if after:
            query = query.start_after({"__name__": self._endpoints.document(after)})
        snaps = query.limit(limit).stream(**SWEEP_CALL.kwargs())
        return [Versioned(_endpoint(s.id, s.to_dict() or {}), s.update_time) for s in snaps]

    def catchups_due(self, now: datetime, limit: int) -> list[Versioned]:
        snaps = (
            self._due(queries.ENDPOINTS_TO_CATCH_UP, now).limit(limit).stream(**SWEEP_CALL.kwargs())
        )
        return [Versioned(_endpoint(s.id, s.to_dict() or {}), s.update_time) for s in snaps]

    # -- events --------------------------------------------------------------

    def event_ref(self, event_id: str) -> Any:
        return self._events.document(event_id)

    def get_event(self, event_id: str) -> Versioned | None:
        snap = self._events.document(event_id).get(**self._deadline.kwargs())
        if not snap.exists:
            return None
        return Versioned(_event(snap.id, snap.to_dict() or {}), snap.update_time)

    def create_event(self, event: WebhookEvent, expires_at: datetime) -> bool:
        """Create the event unless it exists (the stage wrote it); True if this call did."""
        already_exists, _, _ = _google()
        try:
            self._events.document(event.event_id).create(
                event_document(event, expires_at), **SWEEP_CALL.kwargs()
            )
        except already_exists:
            return False
        return True

    def events_due(self, now: datetime, limit: int) -> list[Versioned]:
        snaps = (
            self._due(queries.EVENTS_NOT_FANNED_OUT, now).limit(limit).stream(**SWEEP_CALL.kwargs())
        )
        return [Versioned(_event(s.id, s.to_dict() or {}), s.update_time) for s in snaps]

    def postpone_event(self, event_id: str, version: Any, until: datetime) -> bool:
        _, failed_precondition, not_found = _google()
        try:
            self._events.document(event_id).update(
                {"fanout_due_at": until}, option=self._after(version), **SWEEP_CALL.kwargs()
            )
        except (failed_precondition, not_found):
            return False
        return True

    def record_fanout(
        self,
        event: WebhookEvent,
        deliveries: list[Delivery],
        now: datetime,
        expires_at: datetime,
    ) -> bool:
        """Store every delivery of an event and mark it fanned out, in one commit.

        False if another fan-out of the same event stored its deliveries first.
        """
        already_exists, _, not_found = _google()
        batch = self._db.batch()
        for delivery in deliveries:
            batch.create(
                self._deliveries.document(delivery.delivery_id),
                delivery_document(delivery, expires_at),
            )
        batch.update(
            self._events.document(event.event_id),
            {
                "fanout_due_at": None,
                "fanned_out_at": now,
                "deliveries": [d.delivery_id for d in deliveries],
            },
        )
        try:
            batch.commit(**self._deadline.kwargs())
        except (already_exists, not_found):
            return False
        return True

    # -- deliveries ----------------------------------------------------------

    def get_delivery(self, delivery_id: str) -> Versioned | None:
        snap = self._deliveries.document(delivery_id).get(**self._deadline.kwargs())
        if not snap.exists:
            return None
        return Versioned(_delivery(snap.id, snap.to_dict() or {}), snap.update_time)

    def list_deliveries(
        self, tenant_id: str, endpoint_id: str, limit: int, token: str | None
    ) -> tuple[list[Delivery], str | None]:
        items, next_token = self._page(
            queries.LIST_DELIVERIES,
            {"tenant_id": tenant_id, "endpoint_id": endpoint_id},
            limit,
            token,
        )
        return [_delivery(doc_id, doc) for doc_id, doc in items], next_token

    def deliveries_due(self, now: datetime, limit: int) -> list[Delivery]:
        snaps = self._due(queries.DUE_DELIVERIES, now).limit(limit).stream(**SWEEP_CALL.kwargs())
        return [_delivery(s.id, s.to_dict() or {}) for s in snaps]

    def claim_delivery(self, delivery_id: str, version: Any, until: datetime, now: datetime) -> Any:
        """Take the next attempt (moving it past `until`); the new version, or None if lost."""
        _, failed_precondition, not_found = _google()
        try:
            result = self._deliveries.document(delivery_id).update(
                {"next_attempt_at": until, "updated_at": now},
                option=self._after(version),
                **self._deadline.kwargs(),
            )
        except (failed_precondition, not_found):
            return None
        return result.update_time

    def save_delivery(self, delivery: Delivery, version: Any) -> bool:
        """Record an attempt's outcome or a replay, if the delivery is as `version` saw it."""
        _, failed_precondition, not_found = _google()
        try:
            self._deliveries.document(delivery.delivery_id).update(
                _delivery_fields(delivery), option=self._after(version), **self._deadline.kwargs()
            )
        except (failed_precondition, not_found):
            return False
        return True

    # -- catch-up ------------------------------------------------------------

    def tasks_finished_between(
        self, tenant_id: str, start: datetime, end: datetime, limit: int, after: Any = None
    ) -> list[FinishedTask]:
        """The tenant's tasks with `start <= finished_at <= end`, oldest first, a page at a time."""
        from google.cloud.firestore import FieldFilter

        spec = queries.TASKS_FINISHED_BETWEEN
        query = (
            self._query(spec, {"tenant_id": tenant_id})
            .where(filter=FieldFilter("finished_at", ">=", start))
            .where(filter=FieldFilter("finished_at", "<=", end))
        )
        if after is not None:
            finished_at, task_id = after
            tasks = self._db.collection(queries.TASKS)
            cursor = {"finished_at": finished_at, "__name__": tasks.document(task_id)}
            query = query.start_after(cursor)
        found = []
        for snap in query.limit(limit).stream(**SWEEP_CALL.kwargs()):
            doc = snap.to_dict() or {}
            found.append(
                FinishedTask(
                    task_id=snap.id,
                    status=str(doc.get("status")),
                    finished_at=doc["finished_at"],
                    notify=bool(doc.get("notify")),
                    traceparent=doc.get("traceparent"),
                )
            )
        return found
