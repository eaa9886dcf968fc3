"""Health decisions and time budget with injected checks: no emulators, no Google clients."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.errors import BadRequest
from shared.operations.health import Check, check_health, firestore_check, pubsub_check


def ok(timeout_s: float) -> None:
    return None


def broken(timeout_s: float) -> None:
    raise ConnectionError("connection refused\nsecond line with internals")


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so hung checks end and leave the shared pool free."""
    event = threading.Event()
    yield event
    event.set()


def hanging(release: threading.Event) -> Check:
    def check(timeout_s: float) -> None:
        release.wait(30)

    return check


def run(checks: dict[str, Check], timeout_s: float = 1.0) -> tuple[dict[str, Any], int]:
    return check_health(probe=None, checks=checks, timeout_s=timeout_s, version="1.2.3")


def test_all_checks_pass_is_ok_with_latencies() -> None:
    body, status = run({"firestore": ok, "pubsub": ok})
    assert status == 200
    assert body["status"] == "ok"
    assert body["version"] == "1.2.3"
    for name in ("firestore", "pubsub"):
        assert body["checks"][name]["ok"] is True
        assert isinstance(body["checks"][name]["latency_ms"], float)
        assert "error" not in body["checks"][name]


def test_pubsub_failing_alone_is_degraded_but_still_200() -> None:
    body, status = run({"firestore": ok, "pubsub": broken})
    assert (body["status"], status) == ("degraded", 200)
    assert body["checks"]["pubsub"] == {
        "ok": False,
        "latency_ms": body["checks"]["pubsub"]["latency_ms"],
        "error": "ConnectionError: connection refused",
    }
    assert body["checks"]["firestore"]["ok"] is True


def test_firestore_failing_is_down_and_503() -> None:
    body, status = run({"firestore": broken, "pubsub": ok})
    assert (body["status"], status) == ("down", 503)
    assert body["checks"]["firestore"]["ok"] is False


def test_a_hung_dependency_is_reported_within_the_budget(release: threading.Event) -> None:
    start = time.monotonic()
    body, status = run({"firestore": hanging(release), "pubsub": ok}, timeout_s=0.3)
    elapsed = time.monotonic() - start
    assert elapsed < 1.5  # the budget is 0.3 s; the hung check is never joined
    assert (body["status"], status) == ("down", 503)
    assert body["checks"]["firestore"]["ok"] is False
    assert body["checks"]["firestore"]["error"] == "timed out after 0.3 s"
    assert body["checks"]["firestore"]["latency_ms"] >= 300
    assert body["checks"]["pubsub"]["ok"] is True


def test_a_hung_pubsub_only_degrades(release: threading.Event) -> None:
    body, status = run({"firestore": ok, "pubsub": hanging(release)}, timeout_s=0.3)
    assert (body["status"], status) == ("degraded", 200)


def test_checks_run_concurrently() -> None:
    # Each check waits for the other: only concurrent runs can both pass.
    barrier = threading.Barrier(2, timeout=2)

    def meet(timeout_s: float) -> None:
        barrier.wait()

    body, _ = run({"firestore": meet, "pubsub": meet}, timeout_s=3)
    assert body["status"] == "ok", body


def test_each_check_gets_the_budget_as_its_deadline() -> None:
    seen: list[float] = []

    def record(timeout_s: float) -> None:
        seen.append(timeout_s)

    run({"firestore": record, "pubsub": record}, timeout_s=0.7)
    assert seen == [0.7, 0.7]


def test_live_probe_touches_no_dependency() -> None:
    calls: list[str] = []

    def spy(timeout_s: float) -> None:
        calls.append("called")

    body, status = check_health(probe="live", checks={"firestore": spy}, version="v")
    assert (body, status) == ({"status": "ok", "version": "v", "checks": {}}, 200)
    assert calls == []


def test_ready_probe_runs_the_checks() -> None:
    body, status = check_health(
        probe="ready", checks={"firestore": broken}, timeout_s=1, version="v"
    )
    assert (body["status"], status) == ("down", 503)


def test_unknown_probe_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        check_health(probe="deep", checks={}, version="v")
    assert info.value.field == "probe"


def test_version_and_budget_default_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import get_settings

    monkeypatch.setenv("AIA_VERSION", "2024.1")
    monkeypatch.setenv("AIA_HEALTH_TIMEOUT_S", "0.4")
    get_settings.cache_clear()
    seen: list[float] = []
    try:
        body, _ = check_health(probe=None, checks={"firestore": seen.append})
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert body["version"] == "2024.1"
    assert seen == [0.4]


class FakeFirestore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self._path: list[str] = []

    def collection(self, name: str) -> FakeFirestore:
        self._path = [name]
        return self

    def document(self, name: str) -> FakeFirestore:
        self._path.append(name)
        return self

    def get(self, **kwargs: Any) -> None:
        self.calls.append((self._path[0], self._path[1], kwargs))


class FakePublisher:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def get_topic(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def test_firestore_check_reads_one_document_with_the_deadline_and_no_retries() -> None:
    client = FakeFirestore()
    firestore_check(0.9, client=client)
    assert client.calls == [("health", "probe", {"timeout": 0.9, "retry": None})]


def test_pubsub_check_fetches_the_tasks_topic_with_the_deadline_and_no_retries() -> None:
    client = FakePublisher()
    pubsub_check(0.9, client=client, topic="projects/p/topics/aia-tasks")
    assert client.calls == [{"topic": "projects/p/topics/aia-tasks", "timeout": 0.9, "retry": None}]
