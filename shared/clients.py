"""Google clients, created lazily and once per instance.

Importing this module imports no Google library; each provider imports its
client on first call, so functions that never touch a dependency never pay
for it. Tests clear the caches with `reset_clients()`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import get_settings

if TYPE_CHECKING:
    from google.cloud.firestore import Client as FirestoreClient
    from google.cloud.pubsub_v1 import PublisherClient


@functools.cache
def firestore_client() -> FirestoreClient:
    # Its batches build plain writes without proto-plus (shared/firestore_fast.py).
    from shared.firestore_fast import FastClient

    settings = get_settings()
    return FastClient(project=settings.project, database=settings.firestore_database)


@functools.cache
def keys_firestore_client() -> FirestoreClient:
    """The database holding API keys: separate, so serving functions may only read it."""
    from shared.firestore_fast import FastClient

    settings = get_settings()
    if settings.keys_database == settings.firestore_database:
        return firestore_client()
    return FastClient(project=settings.project, database=settings.keys_database)


@functools.cache
def publisher() -> PublisherClient:
    from google.cloud import pubsub_v1

    # One message per batch: the submit path waits for its publish, and the
    # default 10 ms batch timer would be added to every request.
    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1),
    )


@dataclass(frozen=True)
class Deadline:
    """The budget of one Google call on one path: per attempt, and across its retries.

    Every call AIA makes names one, so a frozen dependency costs a bounded wait
    and an honest answer (503 with Retry-After, or a deferred dispatch), never a
    request that hangs for the client library's default minute of retries.
    """

    attempt_s: float
    total_s: float

    def kwargs(self) -> dict[str, Any]:
        """`timeout=` and `retry=` for a google-cloud call."""
        return {"timeout": self.attempt_s, "retry": _retry(self.total_s)}


@functools.cache
def _retry(total_s: float) -> Any:
    from google.api_core import retry

    return retry.Retry(
        predicate=retry.if_transient_error, initial=0.05, maximum=0.5, multiplier=2, timeout=total_s
    )


# The submit path answers within 5 s whatever is frozen: auth read, then the
# write, then the publish (which defers rather than fails).
AUTH_READ = Deadline(attempt_s=1.0, total_s=1.5)
SUBMIT_WRITE = Deadline(attempt_s=2.0, total_s=2.5)
PUBLISH_WAIT_S = 1.5
STATUS_READ = Deadline(attempt_s=2.0, total_s=3.0)
# The worker has its lease to spend; a delivery that cannot finish is redelivered.
WORKER_CALL = Deadline(attempt_s=5.0, total_s=10.0)
SWEEP_CALL = Deadline(attempt_s=10.0, total_s=20.0)
# A flush as the process exits: one short try, so a dead dependency cannot hold the exit.
EXIT_CALL = Deadline(attempt_s=2.0, total_s=2.0)
# The ticker runs about once a second: a frozen call must not hold many ticks back.
TICK_CALL = Deadline(attempt_s=3.0, total_s=6.0)
# Webhooks: the tenant API answers like the task API; the outbox's endpoint lookup
# sits on the worker's finish path (a failure there is treated as "subscribed");
# deliveries have the delivery function's time, which the receiver's 15 s dominates.
WEBHOOK_API = Deadline(attempt_s=2.0, total_s=3.0)
WEBHOOK_LOOKUP = Deadline(attempt_s=1.0, total_s=2.0)
WEBHOOK_DELIVERY = Deadline(attempt_s=5.0, total_s=10.0)

_PUBLISH = "/google.pubsub.v1.Publisher/Publish"


class DirectPublisher:
    """Publishes one message per call and returns its id: one RPC, in the calling thread.

    The library's `publish` batches: each message starts a batch with a timer
    thread and a commit thread, and answers through a future. A caller that
    waits for every message anyway paid about 2 ms and 1 ms of CPU for that on
    the emulator. This sends `Publish` on the client's own channel (its emulator
    and credential set-up) with AIA's deadline, as the generated client sends it
    (api_core's error mapping, retry, deadline, user agent and routing header),
    but with a raw protobuf request and answer: proto-plus building them, and
    the transport's debug-log interceptor, cost ~0.3 ms of CPU per publish.
    """

    def __init__(self, client: Callable[[], PublisherClient]) -> None:
        # Made at the first publish: a worker's cold delivery of a task that
        # publishes nothing never loads Pub/Sub.
        self._make_client = client
        self._rpc: Any = None
        self._lock = threading.Lock()

    def _publish_rpc(self) -> Any:
        with self._lock:
            if self._rpc is None:
                from google.api_core import gapic_v1
                from google.pubsub_v1.services.publisher.transports.base import (
                    DEFAULT_CLIENT_INFO,
                )
                from google.pubsub_v1.types import PublishRequest, PublishResponse

                client = self._make_client()
                client._validate_universe_domain()  # as the generated client checks first
                stub = client._transport.grpc_channel.unary_unary(
                    _PUBLISH,
                    request_serializer=PublishRequest.pb().SerializeToString,
                    response_deserializer=PublishResponse.pb().FromString,
                )
                self._rpc = gapic_v1.method.wrap_method(  # type: ignore[no-untyped-call]
                    stub,
                    default_retry=None,
                    default_timeout=None,
                    client_info=DEFAULT_CLIENT_INFO,
                )
            return self._rpc

    def publish(
        self, topic: str, data: bytes, attributes: dict[str, str], *, deadline: Deadline
    ) -> str:
        from google.api_core import gapic_v1
        from google.pubsub_v1.types import PublishRequest, PubsubMessage

        rpc = self._rpc or self._publish_rpc()
        request = PublishRequest.pb()(
            topic=topic, messages=[PubsubMessage.pb()(data=data, attributes=attributes)]
        )
        routing = gapic_v1.routing_header.to_grpc_metadata((("topic", topic),))  # type: ignore[no-untyped-call]
        response = rpc(request, metadata=(routing,), **deadline.kwargs())
        message_id: str = response.message_ids[0]
        return message_id


def topic_path(topic: str) -> str:
    return f"projects/{get_settings().project}/topics/{topic}"


def reset_clients() -> None:
    """Forget cached clients and settings (tests, or after changing the environment)."""
    firestore_client.cache_clear()
    keys_firestore_client.cache_clear()
    publisher.cache_clear()
    get_settings.cache_clear()
