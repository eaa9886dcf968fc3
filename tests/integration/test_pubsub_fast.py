"""`FastPublisher` against the Pub/Sub emulator: what it publishes arrives whole."""

from __future__ import annotations

import pytest

from shared.clients import SUBMIT_WRITE
from shared.pubsub_fast import FastPublisher
from tests.conftest import observed_topics

pytestmark = pytest.mark.integration

PROJECT = "aia-pubsub-fast"


def test_a_published_message_arrives_with_its_data_attributes_and_id(
    emulators_clean: dict[str, str],
) -> None:
    from google.cloud import pubsub_v1

    ((topic, sub),) = observed_topics(PROJECT, ("fast",)).values()
    publisher = FastPublisher()
    data, attributes = b"\x00\xffsealed", {"tenant_id": "t", "task_id": "a" * 32}
    sent = {publisher.publish(topic, data, attributes, deadline=SUBMIT_WRITE) for _ in range(3)}
    assert len(sent) == 3  # one id per message

    subscriber = pubsub_v1.SubscriberClient()
    try:
        got: list[pubsub_v1.types.ReceivedMessage] = []
        for _ in range(50):
            got += subscriber.pull(subscription=sub, max_messages=10, timeout=10).received_messages
            if len(got) >= 3:
                break
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    finally:
        subscriber.close()
    assert {m.message.message_id for m in got} == sent
    assert all(m.message.data == data and dict(m.message.attributes) == attributes for m in got)


def test_get_topic_names_a_topic_and_a_missing_one_is_not_found(
    emulators_clean: dict[str, str],
) -> None:
    from google.api_core.exceptions import NotFound

    ((topic, _),) = observed_topics(PROJECT, ("looked-up",)).values()
    publisher = FastPublisher()
    assert publisher.get_topic(topic, timeout=10) == topic
    with pytest.raises(NotFound):
        publisher.get_topic(f"projects/{PROJECT}/topics/absent", timeout=10)
    with pytest.raises(NotFound):
        publisher.publish(f"projects/{PROJECT}/topics/absent", b"x", {}, deadline=SUBMIT_WRITE)
