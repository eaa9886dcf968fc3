"""Session-wide fixtures: the official emulators, started once when a test asks for them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devtools.emulators import emulators, reset_firestore, reset_pubsub
from shared.clients import reset_clients
from shared.operations.metrics import forget_cached

TEST_PROJECT = "aia-test"


@pytest.fixture(scope="session")
def emulator_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start Firestore and Pub/Sub emulators on free ports; point this process at them."""
    log_dir = tmp_path_factory.mktemp("emulator-logs")
    with emulators(TEST_PROJECT, log_dir=log_dir) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        reset_clients()
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reset_clients()


@pytest.fixture
def emulators_clean(emulator_env: dict[str, str]) -> dict[str, str]:
    """Emulators with all data wiped before the test."""
    reset_firestore(emulator_env["FIRESTORE_EMULATOR_HOST"], TEST_PROJECT)
    reset_pubsub(emulator_env["PUBSUB_EMULATOR_HOST"])
    reset_clients()
    forget_cached()  # a scrape cached before the wipe would describe the old data
    return emulator_env


def observed_topics(project: str, names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Create each topic with a pull subscription `<name>-observer`: name -> (topic, sub)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    made = {}
    for name in names:
        topic = publisher.create_topic(name=f"projects/{project}/topics/{name}").name
        sub = subscriber.create_subscription(
            name=f"projects/{project}/subscriptions/{name}-observer", topic=topic
        ).name
        made[name] = (topic, sub)
    subscriber.close()
    return made
