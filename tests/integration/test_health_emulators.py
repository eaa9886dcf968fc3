"""Readiness against the real emulators, a dead port and a port that never answers.

What only real clients show: which error each failure produces, and that a
check given a deadline gives up at it without retrying (so a check the answer
abandoned does end). Which failures mean degraded or down is the unit tier's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from devtools.emulators import free_port
from shared.clients import publisher, reset_clients, topic_path
from shared.config import get_settings
from shared.operations.health import check_health, firestore_check, pubsub_check
from tests.support.health import assert_health

pytestmark = pytest.mark.integration

# Generous: a dead port is refused at once, so the client's own error decides,
# never the budget, however loaded the machine is.
PATIENT_S = 10.0

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


def test_both_emulators_up_is_ok(tasks_topic: str) -> None:
    body, status = check_health(probe=None, timeout_s=PATIENT_S)
    assert_health(body, status, status="ok")


def test_missing_tasks_topic_fails_the_pubsub_check(emulators_clean: dict[str, str]) -> None:
    body, status = check_health(probe=None, timeout_s=PATIENT_S)
    checks = assert_health(body, status, status="degraded", failed=("pubsub",))
    assert checks["pubsub"]["error"].startswith("NotFound: 404"), checks


def test_firestore_on_a_dead_port_fails_its_check_at_once(
    tasks_topic: str, repoint: Repoint
) -> None:
    repoint("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    body, status = check_health(probe=None, timeout_s=PATIENT_S)
    checks = assert_health(body, status, status="down", failed=("firestore",))
    # The client's own refusal, not the budget running out: no retries inside.
    assert checks["firestore"]["error"].startswith("ServiceUnavailable: 503"), checks


def test_pubsub_on_a_dead_port_fails_its_check_at_once(
    emulators_clean: dict[str, str], repoint: Repoint
) -> None:
    repoint("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    body, status = check_health(probe=None, timeout_s=PATIENT_S)
    checks = assert_health(body, status, status="degraded", failed=("pubsub",))
    assert checks["pubsub"]["error"].startswith("ServiceUnavailable: 503"), checks


@pytest.mark.parametrize("check", [firestore_check, pubsub_check], ids=["firestore", "pubsub"])
def test_a_hung_dependency_ends_the_check_at_its_deadline_without_retrying(
    emulators_clean: dict[str, str],
    repoint: Repoint,
    black_hole: str,
    check: Callable[[float], None],
) -> None:
    from google.api_core.exceptions import DeadlineExceeded

    repoint("FIRESTORE_EMULATOR_HOST", black_hole)
    repoint("PUBSUB_EMULATOR_HOST", black_hole)
    # DeadlineExceeded is the one attempt running out. Without the deadline the
    # call would hang (the abandoned thread with it); with the client's default
    # retry it would be a RetryError after a minute of attempts.
    with pytest.raises(DeadlineExceeded):
        check(0.2)


def test_hung_dependencies_answer_down(
    emulators_clean: dict[str, str], repoint: Repoint, black_hole: str
) -> None:
    repoint("FIRESTORE_EMULATOR_HOST", black_hole)
    repoint("PUBSUB_EMULATOR_HOST", black_hole)
    body, status = check_health(probe=None, timeout_s=0.2)
    checks = assert_health(body, status, status="down", failed=("firestore", "pubsub"))
    for result in checks.values():
        # Whichever ends first: the budget, or the client's deadline (the same value).
        error = result["error"]
        assert error == "timed out after 0.2 s" or error.startswith("DeadlineExceeded"), error
