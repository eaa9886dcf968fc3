"""Pub/Sub edge: decode a push CloudEvent, and map outcomes to ack or nack. One place.

Returning from the function acknowledges the message (2xx); raising makes
functions-framework answer 5xx, so Pub/Sub redelivers with backoff.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared import logs
from shared.config import get_settings
from shared.errors import AIAError
from shared.tasks.models import TaskMessage

if TYPE_CHECKING:
    from shared.tasks.worker import Processed

M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("aia.events")


class Redeliver(Exception):
    """Raised to nack: Pub/Sub delivers the message again later."""


def should_ack(error: BaseException | None) -> bool:
    """Ack successes and errors that a redelivery cannot fix; nack the rest."""
    if error is None:
        return True
    if isinstance(error, AIAError):
        return not error.retryable
    return False


def decode_message(event_data: Any, model: type[M]) -> M:
    """The `model` message inside a push body (or a messagePublished CloudEvent's data)."""
    try:
        message = event_data["message"]
        raw = base64.b64decode(message["data"], validate=True)
        return model.model_validate(json.loads(raw))
    except (KeyError, TypeError, ValueError, binascii.Error, ValidationError) as exc:
        raise MalformedMessage(f"not a {model.__name__}: {exc}") from exc


def decode_task_message(event_data: Any) -> TaskMessage:
    """The TaskMessage inside a messagePublished CloudEvent's data."""
    return decode_message(event_data, TaskMessage)


class MalformedMessage(AIAError):
    code = "malformed-message"
    title = "Malformed task message"
    retryable = False


def handle(event_data: Any, process: Callable[[TaskMessage], Processed]) -> None:
    """Run `process` for one delivery; return to ack, raise Redeliver to nack.

    Tasks that fail for good are dead-lettered by the worker (through an outbox
    in the task). A message that is not a task message at all is acknowledged
    and logged: it is nobody's task, and redelivering it would never help.
    """
    # functions-framework's CloudEvent keeps the message, not the subscription's name.
    handle_push(event_data, TaskMessage, process, destination=get_settings().tasks_topic)


def handle_push(
    event_data: Any,
    model: type[M],
    process: Callable[[M], Any],
    *,
    destination: str | None = None,
) -> None:
    """`handle` for any message model: return to ack, raise Redeliver to nack.

    `process` returns something with `outcome` and `detail`, which is logged.
    """
    settings = get_settings()
    logs.configure(settings.log_level, settings.project)
    message = event_data.get("message", {}) if isinstance(event_data, dict) else {}
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        attributes = {}
    logs.bind(logs.trace_id_from_headers(attributes), message_id=message.get("messageId"))
    error: BaseException | None = None
    with _consumer_span(event_data, message, attributes, destination) as current:
        try:
            decoded = decode_message(event_data, model)
            ids: dict[str, Any] = {}
            for name, key in (("task_id", "aia.task.id"), ("tenant_id", "aia.tenant.id")):
                if isinstance(value := getattr(decoded, name, None), str):
                    current.set_attribute(key, value)
                    ids[name] = value
            processed = process(decoded)
            outcome = getattr(processed.outcome, "value", processed.outcome)
            # One line per delivery: what it was for, how it ended, how long the work ran.
            fields = {"outcome": outcome, "detail": processed.detail, **ids}
            if (duration := getattr(processed, "duration_s", None)) is not None:
                fields["duration_s"] = duration
            log.info("delivery handled", extra=fields)
            current.set_attribute("aia.outcome", str(outcome))
        except Exception as exc:  # noqa: BLE001 - every failure must become ack or nack
            error = exc
            current.set_attribute("aia.outcome", "redeliver" if not should_ack(exc) else "ack")
    if error is None:
        return
    # Error texts may quote task data, so logs name the error's code and type only.
    code = str(getattr(error, "code", type(error).__name__))
    if should_ack(error):
        log.error("delivery acknowledged without running", extra={"code": code})
        return
    log.warning("delivery will be retried", extra={"code": code})
    raise Redeliver(code) from error


def _consumer_span(
    event_data: Any,
    message: dict[str, Any],
    attributes: dict[str, Any],
    destination: str | None,
) -> Any:
    """The CONSUMER span of one push delivery, continuing its publisher's trace.

    Attributes follow OpenTelemetry's messaging conventions for Pub/Sub; the
    span is the publisher's child and also links it.
    """
    from shared import tracing

    subscription = event_data.get("subscription") if isinstance(event_data, dict) else None
    name = str(subscription or destination or "").rsplit("/", 1)[-1] or "push"
    delivery_attempt = event_data.get("deliveryAttempt") if isinstance(event_data, dict) else None
    return tracing.span(
        f"process {name}",
        kind="CONSUMER",
        parent=tracing.extract({k: str(v) for k, v in attributes.items()}),
        link_parent=True,
        attributes={
            "messaging.system": "gcp_pubsub",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.subscription.name": str(subscription or ""),
            "messaging.destination.name": str(destination or ""),
            "messaging.message.id": str(message.get("messageId") or ""),
            **(
                {"messaging.gcp_pubsub.message.delivery_attempt": int(delivery_attempt)}
                if isinstance(delivery_attempt, int)
                else {}
            ),
            **({"aia.task.type": attributes["type"]} if "type" in attributes else {}),
        },
    )
