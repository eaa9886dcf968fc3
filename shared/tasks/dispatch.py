"""Publishing task ids to Pub/Sub: the tasks topic and the dead-letter topic."""

from __future__ import annotations

import logging
from typing import Protocol

from shared import tracing
from shared.clients import PUBLISH_WAIT_S, Deadline
from shared.errors import Unavailable
from shared.tasks.models import TaskMessage

log = logging.getLogger("aia.dispatch")


class MessageSender(Protocol):
    """Sends one message, returning its id once Pub/Sub stored it (`pubsub_fast.FastPublisher`)."""

    def publish(
        self, topic: str, data: bytes, attributes: dict[str, str], *, deadline: Deadline
    ) -> str: ...


class TaskPublisher(Protocol):
    def publish(
        self,
        message: TaskMessage,
        *,
        attributes: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> str: ...
    def dead_letter(self, data: bytes, attributes: dict[str, str]) -> str: ...


class PubSubTaskPublisher:
    """Publishes and waits for the server's ack, so a returned id means it is stored.

    The wait is bounded (`wait_s`): a frozen Pub/Sub costs the submit path that
    long before it answers `deferred`, never the client library's minute. The
    message may still go out later; a duplicate delivery is harmless.
    """

    def __init__(
        self,
        client: MessageSender,
        tasks_topic: str,
        dead_letter_topic: str,
        *,
        wait_s: float = PUBLISH_WAIT_S,
    ) -> None:
        self._client = client
        self._tasks_topic = tasks_topic
        self._dead_letter_topic = dead_letter_topic
        self._deadline = Deadline(attempt_s=wait_s, total_s=wait_s)

    def publish(
        self,
        message: TaskMessage,
        *,
        attributes: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> str:
        data = message.model_dump_json(exclude_none=True).encode()
        attrs = {"tenant_id": message.tenant_id, **(attributes or {})}
        return self._send(self._tasks_topic, data, attrs, traceparent)

    def dead_letter(self, data: bytes, attributes: dict[str, str]) -> str:
        return self._send(self._dead_letter_topic, data, dict(attributes), None)

    def _send(
        self, topic: str, data: bytes, attributes: dict[str, str], traceparent: str | None
    ) -> str:
        with tracing.publishing(topic, attributes, traceparent=traceparent) as current:
            try:
                message_id = self._client.publish(topic, data, attributes, deadline=self._deadline)
            except Exception as exc:
                raise Unavailable(f"publishing to {topic.rsplit('/', 1)[-1]} failed") from exc
            current.set_attribute("messaging.message.id", message_id)
        return message_id
