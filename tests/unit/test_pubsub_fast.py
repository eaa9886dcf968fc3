"""`FastPublisher` sends the generated client's `Publish` and `GetTopic`, without the library."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from shared import pubsub_fast
from shared.clients import SUBMIT_WRITE
from shared.pubsub_fast import FastPublisher, messages
from tests.support.rpc import Recorder

TOPIC = "projects/p/topics/tasks"


def _library_client() -> Any:
    from google.cloud import pubsub_v1

    # No call leaves the process: every RPC below is replaced.
    return pubsub_v1.PublisherClient(credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]


def _unreachable() -> Any:
    raise AssertionError("no channel is opened in these tests")


def test_a_publish_is_the_generated_clients_call_on_the_wire() -> None:
    from google.pubsub_v1 import PubsubMessage
    from google.pubsub_v1.services.publisher.client import PublisherClient as Generated
    from google.pubsub_v1.types import PublishRequest, PublishResponse

    client = _library_client()
    transport = client._transport
    library = Recorder(PublishResponse(message_ids=["41"]))
    transport._wrapped_methods[transport.publish] = library
    publisher = FastPublisher(_unreachable)
    plain = Recorder(messages().PublishResponse(message_ids=["42"]))
    publisher._publish_rpc = plain  # the RPC it builds once, replaced
    data, attributes = b"\x00sealed", {"tenant_id": "t", "task_id": "a" * 32}

    assert publisher.publish(TOPIC, data, attributes, deadline=SUBMIT_WRITE) == "42"
    Generated.publish(
        client,
        topic=TOPIC,
        messages=[PubsubMessage(data=data, attributes=attributes)],
        **SUBMIT_WRITE.kwargs(),
    )
    (library_request, library_kwargs), (plain_request, plain_kwargs) = library.calls + plain.calls
    # Byte for byte what the library sends, and what it sends parses as ours.
    wire = PublishRequest.serialize(library_request)
    assert plain_request.SerializeToString(deterministic=True) == PublishRequest.pb(
        library_request
    ).SerializeToString(deterministic=True)
    assert messages().PublishRequest.FromString(wire) == plain_request
    assert set(library_kwargs) == set(plain_kwargs) == {"retry", "timeout", "metadata"}
    assert library_kwargs["timeout"] == plain_kwargs["timeout"] == SUBMIT_WRITE.attempt_s
    assert ("x-goog-request-params", "topic=projects/p/topics/tasks") in plain_kwargs["metadata"]
    assert [m for m in library_kwargs["metadata"] if m[0] == "x-goog-request-params"] == list(
        plain_kwargs["metadata"]
    )


def test_answers_parse_as_the_librarys_messages_write_them() -> None:
    from google.pubsub_v1.types import PublishResponse, Topic

    answer = PublishResponse.serialize(PublishResponse(message_ids=["7", "8"]))
    assert list(messages().PublishResponse.FromString(answer).message_ids) == ["7", "8"]
    # A topic carries more than its name; what this subset does not name is kept, not lost.
    topic = Topic.serialize(Topic(name=TOPIC, labels={"a": "b"}, kms_key_name="k"))
    parsed = messages().Topic.FromString(topic)
    assert parsed.name == TOPIC
    assert parsed.SerializeToString() == topic


def test_get_topic_is_one_attempt_with_the_routing_header() -> None:
    publisher = FastPublisher(_unreachable)
    plain = Recorder(messages().Topic(name=TOPIC))
    publisher._publish_rpc = Recorder(None)  # built: nothing else is made
    publisher._get_topic_rpc = plain
    assert publisher.get_topic(TOPIC, timeout=0.7) == TOPIC
    ((request, kwargs),) = plain.calls
    assert request.topic == TOPIC
    assert kwargs == {
        "metadata": (("x-goog-request-params", "topic=projects/p/topics/tasks"),),
        "timeout": 0.7,
        "retry": None,
    }


def test_the_channel_and_calls_are_made_once_at_the_first_use() -> None:
    made: list[int] = []

    class Channel:
        def unary_unary(self, path: str, **_: Any) -> Any:
            return Recorder(path)

    def make() -> Any:
        made.append(1)
        return Channel()

    publisher = FastPublisher(make)
    assert made == []  # nothing at construction: a cold path that never publishes
    publisher.prepare()
    first = publisher._publish_rpc
    publisher.prepare()
    assert publisher._publish_rpc is first
    assert made == [1]


def test_the_emulator_gets_an_insecure_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    opened: list[str] = []
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8681")

    def insecure_channel(target: str) -> str:
        opened.append(target)
        return "ch"

    monkeypatch.setattr(grpc, "insecure_channel", insecure_channel)
    assert pubsub_fast.pubsub_channel() == "ch"
    assert opened == ["127.0.0.1:8681"]


def test_production_gets_the_librarys_channel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import grpc_helpers
    from google.pubsub_v1.services.publisher.transports.base import PublisherTransport

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    def create_channel(*args: Any, **kwargs: Any) -> None:
        calls.append((args, kwargs))

    monkeypatch.setattr(grpc_helpers, "create_channel", create_channel)
    pubsub_fast.pubsub_channel()
    ((args, kwargs),) = calls
    assert args == (f"{PublisherTransport.DEFAULT_HOST}:443",)
    assert kwargs["default_scopes"] == PublisherTransport.AUTH_SCOPES
    assert kwargs["default_host"] == PublisherTransport.DEFAULT_HOST
    assert kwargs["options"] == list(pubsub_fast.CHANNEL_OPTIONS)


def test_publishing_does_not_load_the_client_library() -> None:
    code = (
        "import sys\n"
        "from shared.pubsub_fast import FastPublisher, messages\n"
        "class Channel:\n"
        "    def unary_unary(self, path, **_):\n"
        "        return lambda request, **k: messages().PublishResponse(message_ids=['1'])\n"
        "from shared.clients import SUBMIT_WRITE\n"
        "p = FastPublisher(Channel)\n"
        "assert p.publish('projects/p/topics/t', b'x', {}, deadline=SUBMIT_WRITE) == '1'\n"
        "print(sorted(m for m in sys.modules if 'pubsub' in m and m != 'shared.pubsub_fast'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
