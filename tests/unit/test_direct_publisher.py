"""`DirectPublisher` sends the generated client's `Publish` call, without proto-plus."""

from __future__ import annotations

from typing import Any

from google.auth.credentials import AnonymousCredentials

from shared.clients import SUBMIT_WRITE, DirectPublisher
from tests.support.rpc import Recorder

TOPIC = "projects/p/topics/tasks"


def _client() -> Any:
    from google.cloud import pubsub_v1

    # No call leaves the process: every RPC below is replaced.
    return pubsub_v1.PublisherClient(credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]


def test_a_publish_is_the_generated_clients_call_with_a_raw_request() -> None:
    from google.pubsub_v1 import PubsubMessage
    from google.pubsub_v1.services.publisher.client import PublisherClient as Generated
    from google.pubsub_v1.types import PublishRequest, PublishResponse

    client = _client()
    transport = client._transport
    library = Recorder(PublishResponse(message_ids=["41"]))
    transport._wrapped_methods[transport.publish] = library
    publisher = DirectPublisher(lambda: client)
    plain = Recorder(PublishResponse.pb()(message_ids=["42"]))
    publisher._rpc = plain  # the RPC it builds once, replaced
    data, attributes = b"\x00sealed", {"tenant_id": "t", "task_id": "a" * 32}

    assert publisher.publish(TOPIC, data, attributes, deadline=SUBMIT_WRITE) == "42"
    Generated.publish(
        client,
        topic=TOPIC,
        messages=[PubsubMessage(data=data, attributes=attributes)],
        **SUBMIT_WRITE.kwargs(),
    )
    (library_request, library_kwargs), (plain_request, plain_kwargs) = library.calls + plain.calls
    assert PublishRequest.pb(library_request) == plain_request
    assert set(library_kwargs) == set(plain_kwargs) == {"retry", "timeout", "metadata"}
    assert library_kwargs["timeout"] == plain_kwargs["timeout"] == SUBMIT_WRITE.attempt_s
    assert library_kwargs["metadata"] == plain_kwargs["metadata"]
    assert ("x-goog-request-params", "topic=projects/p/topics/tasks") in plain_kwargs["metadata"]


def test_the_client_and_its_rpc_are_made_once_at_the_first_publish() -> None:
    made = []

    def make() -> Any:
        made.append(1)
        return _client()

    publisher = DirectPublisher(make)
    assert made == []  # nothing at construction: a cold path that never publishes
    first = publisher._publish_rpc()
    assert publisher._publish_rpc() is first
    assert made == [1]
