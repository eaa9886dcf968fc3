"""Pub/Sub's two calls AIA serves with, without loading google-cloud-pubsub.

Importing the client library (its proto-plus types and the publisher's
batching machinery) and building a `PublisherClient` cost about 200 ms of a
cold start on this machine, on the submit path and the readiness check, for
two unary calls: `Publish` and `GetTopic`. This sends them on a channel made
as the library makes it (the emulator's insecure channel, or
`grpc_helpers.create_channel` with Pub/Sub's scopes and channel options),
through api_core's `wrap_method` (error mapping, retry, deadline, user agent),
with the routing header the generated client sends, and with raw protobuf
messages from a private descriptor pool: the wire format is Pub/Sub's, field
for field, and a process that also loads the library sees no clash.
Administration (creating topics, subscribing) stays with the library.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from shared.clients import Deadline

DEFAULT_HOST = "pubsub.googleapis.com"
AUTH_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/pubsub",
)
# As google.pubsub_v1's gRPC transport opens its channel.
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30000),
)
_PUBLISH = "/google.pubsub.v1.Publisher/Publish"
_GET_TOPIC = "/google.pubsub.v1.Publisher/GetTopic"


@dataclass(frozen=True)
class Messages:
    """Message classes for google/pubsub/v1/pubsub.proto's fields that AIA sends or reads."""

    PubsubMessage: Any
    PublishRequest: Any
    PublishResponse: Any
    GetTopicRequest: Any
    Topic: Any  # its name only: the other fields a server sends are kept as unknown


@functools.cache
def messages() -> Messages:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    optional, repeated = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    string, data, nested = field.TYPE_STRING, field.TYPE_BYTES, field.TYPE_MESSAGE
    proto = descriptor_pb2.FileDescriptorProto(
        name="aia/google_pubsub_v1_subset.proto", package="google.pubsub.v1", syntax="proto3"
    )
    message = proto.message_type.add(name="PubsubMessage")
    message.field.add(name="data", number=1, type=data, label=optional)
    entry = message.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=string, label=optional)
    entry.field.add(name="value", number=2, type=string, label=optional)
    message.field.add(
        name="attributes",
        number=2,
        type=nested,
        label=repeated,
        type_name=".google.pubsub.v1.PubsubMessage.AttributesEntry",
    )
    message.field.add(name="message_id", number=3, type=string, label=optional)
    message.field.add(name="ordering_key", number=5, type=string, label=optional)
    request = proto.message_type.add(name="PublishRequest")
    request.field.add(name="topic", number=1, type=string, label=optional)
    request.field.add(
        name="messages",
        number=2,
        type=nested,
        label=repeated,
        type_name=".google.pubsub.v1.PubsubMessage",
    )
    response = proto.message_type.add(name="PublishResponse")
    response.field.add(name="message_ids", number=1, type=string, label=repeated)
    get_topic = proto.message_type.add(name="GetTopicRequest")
    get_topic.field.add(name="topic", number=1, type=string, label=optional)
    topic = proto.message_type.add(name="Topic")
    topic.field.add(name="name", number=1, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)

    def cls(name: str) -> Any:
        found = pool.FindMessageTypeByName(f"google.pubsub.v1.{name}")
        return message_factory.GetMessageClass(found)

    return Messages(
        cls("PubsubMessage"),
        cls("PublishRequest"),
        cls("PublishResponse"),
        cls("GetTopicRequest"),
        cls("Topic"),
    )


def pubsub_channel() -> grpc.Channel:
    """A channel to Pub/Sub, or to its emulator when PUBSUB_EMULATOR_HOST is set."""
    import grpc

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        return grpc.insecure_channel(target=emulator)  # as the library does
    from google.api_core import grpc_helpers

    # Credentials from the environment (the function's service account), with
    # Pub/Sub's scopes unless the credentials name their own.
    channel: grpc.Channel = grpc_helpers.create_channel(
        f"{DEFAULT_HOST}:443",
        default_scopes=AUTH_SCOPES,
        default_host=DEFAULT_HOST,
        options=list(CHANNEL_OPTIONS),
    )
    return channel


class FastPublisher:
    """Publishes one message per call and returns its id: one RPC, in the calling thread.

    The library's `publish` batches: each message starts a batch with a timer
    thread and a commit thread, and answers through a future. A caller that
    waits for every message anyway paid about 2 ms and 1 ms of CPU for that on
    the emulator, and proto-plus building the request and answer ~0.3 ms more.
    """

    def __init__(self, channel: Callable[[], grpc.Channel] = pubsub_channel) -> None:
        # Opened at the first call: a worker's cold delivery of a task that
        # publishes nothing never opens it.
        self._make_channel = channel
        self._publish_rpc: Any = None
        self._get_topic_rpc: Any = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Build the messages, channel and calls now (no I/O: the channel connects lazily)."""
        with self._lock:
            if self._publish_rpc is not None:
                return
            from google.api_core import gapic_v1

            kinds = messages()
            channel = self._make_channel()
            info = gapic_v1.client_info.ClientInfo()  # type: ignore[no-untyped-call]

            def wrap(path: str, request: Any, response: Any) -> Any:
                stub = channel.unary_unary(
                    path,
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString,
                )
                return gapic_v1.method.wrap_method(  # type: ignore[no-untyped-call]
                    stub, default_retry=None, default_timeout=None, client_info=info
                )

            self._get_topic_rpc = wrap(_GET_TOPIC, kinds.GetTopicRequest, kinds.Topic)
            self._publish_rpc = wrap(_PUBLISH, kinds.PublishRequest, kinds.PublishResponse)

    def publish(
        self, topic: str, data: bytes, attributes: dict[str, str], *, deadline: Deadline
    ) -> str:
        if self._publish_rpc is None:
            self.prepare()
        kinds = messages()
        request = kinds.PublishRequest(
            topic=topic, messages=[kinds.PubsubMessage(data=data, attributes=attributes)]
        )
        response = self._publish_rpc(
            request, metadata=(_routing("topic", topic),), **deadline.kwargs()
        )
        message_id: str = response.message_ids[0]
        return message_id

    def get_topic(self, topic: str, *, timeout: float) -> str:
        """The topic's name if it exists (NotFound if not): one attempt within `timeout`."""
        if self._get_topic_rpc is None:
            self.prepare()
        found = self._get_topic_rpc(
            messages().GetTopicRequest(topic=topic),
            metadata=(_routing("topic", topic),),
            timeout=timeout,
            retry=None,
        )
        name: str = found.name
        return name


def _routing(field: str, value: str) -> tuple[str, str]:
    from google.api_core import gapic_v1

    header: tuple[str, str] = gapic_v1.routing_header.to_grpc_metadata(((field, value),))  # type: ignore[no-untyped-call]
    return header
