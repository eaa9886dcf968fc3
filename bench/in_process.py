"""The use cases and the worker built in-process, as the functions build them, on private emulators.

`providers_on_emulators` starts fresh emulators, points the settings at them
and rebuilds `shared.providers` inside the block. `deliver_all` stands in for
the push subscription: threads take messages from a pull subscription, hand
each to the worker as the push would, and acknowledge it when the worker
returns (nack when it raises), so the releases' wake-ups arrive as real
messages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devtools.emulators import emulators


@contextmanager
def providers_on_emulators(
    project: str, work: Path, settings: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Private emulators, the settings pointing at them, and providers built afresh."""
    from shared import providers
    from shared.security.keyring import generate_keyring

    with emulators(project, log_dir=work) as env:
        saved = dict(os.environ)
        os.environ.update(env)
        os.environ.update(
            {
                "GOOGLE_CLOUD_PROJECT": project,
                "AIA_KEYRING": generate_keyring().to_json(),
                "AIA_LOG_LEVEL": "ERROR",
                "AIA_DIAGNOSTIC_DIR": str(work / "diagnostic"),
                **(settings or {}),
            }
        )
        providers.reset()
        try:
            yield
        finally:
            providers.reset()
            os.environ.clear()
            os.environ.update(saved)


def delivery_subscription(project: str, name: str) -> tuple[Any, str]:
    """A pull subscription on the tasks topic (created with it): the subscriber and its path."""
    from google.cloud import pubsub_v1

    from shared.config import get_settings

    topic = f"projects/{project}/topics/{get_settings().tasks_topic}"
    sub = f"projects/{project}/subscriptions/{name}"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=30)
    return subscriber, sub


def warm_firestore() -> None:
    """The first call to a fresh emulator opens the channel: no use case's cost."""
    from shared.clients import firestore_client

    firestore_client().collection("warm").document("up").get(timeout=30)


def deliver_all(
    subscriber: Any,
    sub: str,
    tasks: Mapping[str, str],
    *,
    threads: int,
    on_result: Callable[[Any], None] | None = None,
    timeout_s: float = 600,
) -> None:
    """Deliver until every task (id -> tenant) succeeded; `on_result` sees each answer."""
    from shared import providers
    from shared.tasks.models import TaskMessage, TaskStatus

    worker, status = providers.worker(), providers.status_service()
    lock = threading.Lock()

    def deliver(ack_id: str, message: TaskMessage) -> None:
        try:
            done = worker.process(message)
        except Exception:  # noqa: BLE001 - nacked, as the push would be
            subscriber.modify_ack_deadline(
                subscription=sub, ack_ids=[ack_id], ack_deadline_seconds=0
            )
            return
        if on_result is not None:
            with lock:
                on_result(done)
        subscriber.acknowledge(subscription=sub, ack_ids=[ack_id])

    left = dict(tasks)
    deadline = time.monotonic() + timeout_s
    checked = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while left and time.monotonic() < deadline:
            got = subscriber.pull(subscription=sub, max_messages=threads, return_immediately=True)
            for received in got.received_messages:
                message = TaskMessage.model_validate_json(received.message.data)
                pool.submit(deliver, received.ack_id, message)
            if got.received_messages:
                continue
            # Reading every status is the harness's own cost: not on each empty pull.
            if time.monotonic() - checked > 2.0:
                left = {
                    t: tenant
                    for t, tenant in left.items()
                    if status.get(tenant, t).status is not TaskStatus.SUCCEEDED
                }
                checked = time.monotonic()
            time.sleep(0.01)
    if left:
        raise RuntimeError(f"{len(left)} tasks did not succeed within {timeout_s:g} s")
