"""Readiness against the real emulators, a dead port and a port that never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.emulators import free_port
from shared.clients import publisher, reset_clients, topic_path
from shared.config import get_settings
from shared.operations.health import check_health

pytestmark = pytest.mark.integration

# The budget (settings.health_timeout_s, 1.5 s by default) plus a generous
# margin: this is the functional "answers within 2 s", not a benchmark.
ANSWER_WITHIN_S = 2.0

Repoint = Callable[[str, str], None]


@pytest.fixture
def tasks_topic(emulators_clean: dict[str, str]) -> str:
    name = topic_path(get_settings().tasks_topic)
    publisher().create_topic(name=name)
    return name


@pytest.fixture
def repoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[Repoint]:
    """Point one emulator variable elsewhere; clients are rebuilt before and after."""

    def point(var: str, host: str) -> None:
        monkeypatch.setenv(var, host)
        reset_clients()

    yield point
    # Runs before monkeypatch restores the environment: the next client is
    # built lazily from the restored variables.
    reset_clients()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections and never answers: a hung dependency."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def timed_check() -> tuple[dict[str, Any], int, float]:
    start = time.monotonic()
    body, status = check_health(probe=None)
    return body, status, time.monotonic() - start


def test_both_emulators_up_is_ok(tasks_topic: str) -> None:
    body, status, _ = timed_check()
    assert (body["status"], status) == ("ok", 200), body
    assert body["checks"] == {
        "firestore": {"ok": True, "latency_ms": body["checks"]["firestore"]["latency_ms"]},
        "pubsub": {"ok": True, "latency_ms": body["checks"]["pubsub"]["latency_ms"]},
    }


def test_missing_tasks_topic_is_degraded(emulators_clean: dict[str, str]) -> None:
    body, status, _ = timed_check()
    assert (body["status"], status) == ("degraded", 200), body
    assert "NotFound" in body["checks"]["pubsub"]["error"]


def test_firestore_on_a_dead_port_is_down(tasks_topic: str, repoint: Repoint) -> None:
    repoint("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    body, status, elapsed = timed_check()
    assert (body["status"], status) == ("down", 503), body
    assert body["checks"]["pubsub"]["ok"] is True
    assert elapsed < ANSWER_WITHIN_S


def test_pubsub_on_a_dead_port_is_degraded(
    emulators_clean: dict[str, str], repoint: Repoint
) -> None:
    repoint("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    body, status, elapsed = timed_check()
    assert (body["status"], status) == ("degraded", 200), body
    assert body["checks"]["firestore"]["ok"] is True
    assert elapsed < ANSWER_WITHIN_S


def test_hung_dependencies_still_answer_within_the_budget(
    emulators_clean: dict[str, str], repoint: Repoint, black_hole: str
) -> None:
    repoint("FIRESTORE_EMULATOR_HOST", black_hole)
    repoint("PUBSUB_EMULATOR_HOST", black_hole)
    body, status, elapsed = timed_check()
    assert (body["status"], status) == ("down", 503), body
    assert body["checks"]["firestore"]["ok"] is False
    assert body["checks"]["pubsub"]["ok"] is False
    assert elapsed < ANSWER_WITHIN_S
