"""Create the Pub/Sub topology AIA runs on: tasks, backstop and dead-letter topics.

    aia-tasks ──push──▶ worker          (after N failed deliveries Pub/Sub forwards to ▼)
    aia-tasks-backstop ──push──▶ worker (the same endpoint; no dead-letter policy)
    aia-tasks-dead-letter ──pull──▶ aia-tasks-dead-letter-sub

Pub/Sub's dead-letter policy counts nacks, not failures: a healthy task nacked
through a Firestore outage would be forwarded too. So it forwards to the
backstop, which hands the message back to the worker; only the worker (the
application) publishes to the dead-letter topic, for tasks that failed for good.

Used by the local stack and by tests; safe to run again on a topology that
already exists (it updates the push subscriptions to the wanted settings).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.config import Settings

if TYPE_CHECKING:
    from google.pubsub_v1 import PublisherClient, SubscriberClient

WORKER_SUBSCRIPTION = "aia-tasks-worker"
WEBHOOK_SUBSCRIPTION = "aia-webhook-events-deliver"
BACKSTOP_SUBSCRIPTION = "aia-tasks-backstop-worker"
DEAD_LETTER_SUBSCRIPTION = "aia-tasks-dead-letter-sub"
BACKSTOP_SUFFIX = "-backstop"


def backstop_topic_name(tasks_topic: str) -> str:
    """Where Pub/Sub's dead-letter policy sends a tasks message: `<tasks topic>-backstop`."""
    return tasks_topic + BACKSTOP_SUFFIX


@dataclass(frozen=True)
class PubSubTopology:
    """Fully qualified names of what `setup_pubsub` created."""

    project: str
    tasks_topic: str
    backstop_topic: str
    dead_letter_topic: str
    worker_subscription: str
    backstop_subscription: str
    dead_letter_subscription: str
    push_endpoint: str
    backstop_push_endpoint: str


def worker_push_endpoint(worker_base_url: str, project: str, topic: str) -> str:
    """Push URL for the worker.

    The `projects/P/topics/T` path makes functions-framework name the topic as
    the CloudEvent source, as Eventarc does in production.
    """
    return f"{worker_base_url.rstrip('/')}/projects/{project}/topics/{topic}"


def _clients(emulator_host: str | None) -> tuple[PublisherClient, SubscriberClient]:
    # The GAPIC clients (not the batching wrappers): only admin calls are made here.
    from google.pubsub_v1 import PublisherClient, SubscriberClient

    if emulator_host is None:
        # The clients read PUBSUB_EMULATOR_HOST themselves, or use real credentials.
        return PublisherClient(), SubscriberClient()

    import grpc
    from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

    # An explicit insecure channel, so callers need not mutate os.environ.
    return (
        PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(emulator_host))
        ),
        SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator_host))
        ),
    )


def setup_pubsub(
    project: str,
    worker_base_url: str,
    *,
    emulator_host: str | None = None,
    tasks_topic: str | None = None,
    dead_letter_topic: str | None = None,
    worker_subscription: str = WORKER_SUBSCRIPTION,
    backstop_subscription: str = BACKSTOP_SUBSCRIPTION,
    dead_letter_subscription: str = DEAD_LETTER_SUBSCRIPTION,
    ack_deadline_s: int = 600,
    min_backoff_s: int = 1,
    max_backoff_s: int = 10,
    max_delivery_attempts: int = 10,
) -> PubSubTopology:
    """Create (or update) topics and subscriptions; return their full names.

    `worker_base_url` is where the `process_task` function listens, e.g.
    `http://127.0.0.1:8093`. The worker subscription's dead-letter policy targets
    the backstop topic, whose push subscription delivers to the same worker; the
    worker dead-letters a task itself once its own attempt count is spent.
    """
    from google.api_core.exceptions import AlreadyExists
    from google.protobuf import duration_pb2, field_mask_pb2
    from google.pubsub_v1 import types

    defaults = Settings()
    tasks_topic = tasks_topic or defaults.tasks_topic
    dead_letter_topic = dead_letter_topic or defaults.dead_letter_topic
    backstop_topic = backstop_topic_name(tasks_topic)
    publisher, subscriber = _clients(emulator_host)
    tasks_path = publisher.topic_path(project, tasks_topic)
    backstop_path = publisher.topic_path(project, backstop_topic)
    dead_path = publisher.topic_path(project, dead_letter_topic)
    worker_path = subscriber.subscription_path(project, worker_subscription)
    backstop_sub_path = subscriber.subscription_path(project, backstop_subscription)
    dead_sub_path = subscriber.subscription_path(project, dead_letter_subscription)
    endpoint = worker_push_endpoint(worker_base_url, project, tasks_topic)
    # Its own topic in the path, so the worker can tell a backstop delivery apart.
    backstop_endpoint = worker_push_endpoint(worker_base_url, project, backstop_topic)
    retry = types.RetryPolicy(
        minimum_backoff=duration_pb2.Duration(seconds=min_backoff_s),
        maximum_backoff=duration_pb2.Duration(seconds=max_backoff_s),
    )

    def upsert(subscription: types.Subscription, fields: list[str]) -> None:
        try:
            subscriber.create_subscription(request=subscription)
        except AlreadyExists:
            # A re-run (new worker port): bring the existing subscription up to date.
            mask = field_mask_pb2.FieldMask(paths=fields)
            subscriber.update_subscription(
                request={"subscription": subscription, "update_mask": mask}
            )

    try:
        for topic in (tasks_path, backstop_path, dead_path):
            with contextlib.suppress(AlreadyExists):
                publisher.create_topic(request={"name": topic})

        push_fields = ["push_config", "ack_deadline_seconds", "retry_policy"]
        upsert(
            types.Subscription(
                name=worker_path,
                topic=tasks_path,
                push_config=types.PushConfig(push_endpoint=endpoint),
                ack_deadline_seconds=ack_deadline_s,
                retry_policy=retry,
                dead_letter_policy=types.DeadLetterPolicy(
                    dead_letter_topic=backstop_path, max_delivery_attempts=max_delivery_attempts
                ),
            ),
            [*push_fields, "dead_letter_policy"],
        )
        # Nothing after the backstop: a message there is redelivered until the worker
        # settles it, since only the application can tell a dead task from a slow one.
        upsert(
            types.Subscription(
                name=backstop_sub_path,
                topic=backstop_path,
                push_config=types.PushConfig(push_endpoint=backstop_endpoint),
                ack_deadline_seconds=ack_deadline_s,
                retry_policy=retry,
            ),
            [*push_fields, "dead_letter_policy"],  # clears one an older setup may have left
        )

        dead_sub: dict[str, Any] = {
            "name": dead_sub_path,
            "topic": dead_path,
            "ack_deadline_seconds": 60,
        }
        with contextlib.suppress(AlreadyExists):
            subscriber.create_subscription(request=dead_sub)
    finally:
        publisher.transport.close()  # type: ignore[no-untyped-call]
        subscriber.transport.close()  # type: ignore[no-untyped-call]

    return PubSubTopology(
        project=project,
        tasks_topic=tasks_path,
        backstop_topic=backstop_path,
        dead_letter_topic=dead_path,
        worker_subscription=worker_path,
        backstop_subscription=backstop_sub_path,
        dead_letter_subscription=dead_sub_path,
        push_endpoint=endpoint,
        backstop_push_endpoint=backstop_endpoint,
    )


def setup_webhook_pubsub(
    project: str,
    deliver_base_url: str,
    *,
    emulator_host: str | None = None,
    topic: str | None = None,
    subscription: str = WEBHOOK_SUBSCRIPTION,
    ack_deadline_s: int = 600,
    min_backoff_s: int = 1,
    max_backoff_s: int = 10,
) -> tuple[str, str]:
    """The webhook topic and its push subscription to `deliver_webhooks` (`POST /push`).

    No dead-letter policy: every message names a record in Firestore (an event
    or a delivery) that the sweep would republish anyway, and the function acks
    whatever it cannot use. Returns the topic's and the subscription's full names.
    """
    from google.api_core.exceptions import AlreadyExists
    from google.protobuf import duration_pb2, field_mask_pb2
    from google.pubsub_v1 import types

    topic = topic or Settings().webhook_events_topic
    publisher, subscriber = _clients(emulator_host)
    topic_path = publisher.topic_path(project, topic)
    sub_path = subscriber.subscription_path(project, subscription)
    wanted = types.Subscription(
        name=sub_path,
        topic=topic_path,
        push_config=types.PushConfig(push_endpoint=f"{deliver_base_url.rstrip('/')}/push"),
        ack_deadline_seconds=ack_deadline_s,
        retry_policy=types.RetryPolicy(
            minimum_backoff=duration_pb2.Duration(seconds=min_backoff_s),
            maximum_backoff=duration_pb2.Duration(seconds=max_backoff_s),
        ),
    )
    try:
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(request={"name": topic_path})
        try:
            subscriber.create_subscription(request=wanted)
        except AlreadyExists:
            mask = field_mask_pb2.FieldMask(
                paths=["push_config", "ack_deadline_seconds", "retry_policy"]
            )
            subscriber.update_subscription(request={"subscription": wanted, "update_mask": mask})
    finally:
        publisher.transport.close()  # type: ignore[no-untyped-call]
        subscriber.transport.close()  # type: ignore[no-untyped-call]
    return topic_path, sub_path
