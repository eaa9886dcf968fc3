"""Google clients, created lazily and once per instance.

Importing this module imports no Google library; each provider imports its
client on first call, so functions that never touch a dependency never pay
for it. Tests clear the caches with `reset_clients()`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from shared.config import get_settings

if TYPE_CHECKING:
    from google.cloud.firestore import Client as FirestoreClient
    from google.cloud.pubsub_v1 import PublisherClient


@functools.cache
def firestore_client() -> FirestoreClient:
    from google.cloud import firestore

    settings = get_settings()
    return firestore.Client(project=settings.project, database=settings.firestore_database)


@functools.cache
def publisher() -> PublisherClient:
    from google.cloud import pubsub_v1

    # One message per batch: the submit path waits for its publish, and the
    # default 10 ms batch timer would be added to every request.
    return pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1),
    )


def topic_path(topic: str) -> str:
    return f"projects/{get_settings().project}/topics/{topic}"


def reset_clients() -> None:
    """Forget cached clients and settings (tests, or after changing the environment)."""
    firestore_client.cache_clear()
    publisher.cache_clear()
    get_settings.cache_clear()
