"""Google clients, created lazily and once per instance.

Importing this module imports no Google library; each provider imports its
client on first call, so functions that never touch a dependency never pay
for it. Tests clear the caches with `reset_clients()`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import get_settings

if TYPE_CHECKING:
    from google.cloud.firestore import Client as FirestoreClient
    from google.cloud.pubsub_v1 import PublisherClient

    from shared.pubsub_fast import FastPublisher


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
def fast_publisher() -> FastPublisher:
    """What the functions publish and check topics with (shared/pubsub_fast.py)."""
    from shared.pubsub_fast import FastPublisher

    return FastPublisher()


@functools.cache
def publisher() -> PublisherClient:
    """The client library's publisher: for administration (topics) and tests."""
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


def topic_path(topic: str) -> str:
    return f"projects/{get_settings().project}/topics/{topic}"


def reset_clients() -> None:
    """Forget cached clients and settings (tests, or after changing the environment)."""
    firestore_client.cache_clear()
    keys_firestore_client.cache_clear()
    publisher.cache_clear()
    fast_publisher.cache_clear()
    get_settings.cache_clear()
