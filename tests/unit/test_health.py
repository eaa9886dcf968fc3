"""Health decisions and time budget with injected checks and clock: no emulators, no clients.

The decisions (which failures make the answer degraded or down) are tested
here and only here; the function's contract tests check how an answer becomes
HTTP, the emulator tests which real failure each check reports.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from shared.errors import BadRequest
from shared.operations import health
from shared.operations.health import Check, check_health, firestore_check, pubsub_check
from tests.support.health import assert_health


class VirtualClock:
    """Stands in for `time.perf_counter` inside the health module.

    Each check runs on a pool thread with its own time, moved only by
    `advance`, so a check takes exactly as long as it says. The caller's
    thread (the one waiting for the answer) reads `waited` in order, the last
    reading repeating: the first is taken before the checks start.
    """

    def __init__(self, waited: tuple[float, ...] = (0.0,)) -> None:
        self._caller = threading.get_ident()
        self._waited = list(waited)
        self._local = threading.local()

    def perf_counter(self) -> float:
        if threading.get_ident() == self._caller:
            return self._waited.pop(0) if len(self._waited) > 1 else self._waited[0]
        now: float = getattr(self._local, "now", 0.0)
        return now

    def advance(self, seconds: float) -> None:
        self._local.now = self.perf_counter() + seconds


def use_clock(monkeypatch: pytest.MonkeyPatch, clock: VirtualClock) -> VirtualClock:
    monkeypatch.setattr(health, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    return clock


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


def hanging(release: threading.Event, finished: threading.Event | None = None) -> Check:
    def check(timeout_s: float) -> None:
        release.wait(30)
        if finished is not None:
            finished.set()

    return check


def run(checks: dict[str, Check], timeout_s: float = 1.0) -> tuple[dict[str, Any], int]:
    return check_health(probe=None, checks=checks, timeout_s=timeout_s, version="1.2.3")


@pytest.mark.parametrize(
    ("failing", "status"),
    [
        ((), "ok"),
        (("pubsub",), "degraded"),  # submits are stored and dispatched later
        (("firestore",), "down"),  # nothing can be stored or read
        (("firestore", "pubsub"), "down"),
    ],
)
def test_which_failures_make_the_answer_degraded_or_down(
    failing: tuple[str, ...], status: str
) -> None:
    checks: dict[str, Check] = {n: broken if n in failing else ok for n in ("firestore", "pubsub")}
    body, code = run(checks)
    assert_health(body, code, status=status, failed=failing)
    assert body["version"] == "1.2.3"


def test_any_exception_is_a_failure_reported_by_its_first_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = use_clock(monkeypatch, VirtualClock())

    def slow_then_broken(timeout_s: float) -> None:
        clock.advance(0.0421)
        broken(timeout_s)

    def long_error(timeout_s: float) -> None:
        raise KeyError("x" * 500)

    body, code = run({"firestore": long_error, "pubsub": slow_then_broken})
    checks = assert_health(body, code, status="down", failed=("firestore", "pubsub"))
    assert checks["pubsub"] == {
        "ok": False,
        "latency_ms": 42.1,
        "error": "ConnectionError: connection refused",
    }
    assert checks["firestore"]["error"].startswith("KeyError: 'xxx")
    assert len(checks["firestore"]["error"]) == 200


def test_latency_is_each_checks_own_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = use_clock(monkeypatch, VirtualClock())

    def taking(seconds: float) -> Check:
        def check(timeout_s: float) -> None:
            clock.advance(seconds)

        return check

    body, code = run({"firestore": taking(0.0123), "pubsub": taking(0.4567)})
    checks = assert_health(body, code, status="ok")
    assert checks["firestore"]["latency_ms"] == 12.3
    assert checks["pubsub"]["latency_ms"] == 456.7


def test_a_hung_dependency_is_reported_at_the_budget_and_never_joined(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    # The answer waited 0.25 s by the caller's clock; a hung check reports that
    # wait, not its own (unfinished) time and not the configured budget.
    use_clock(monkeypatch, VirtualClock(waited=(10.0, 10.25)))
    finished = threading.Event()

    body, code = run({"firestore": hanging(release, finished), "pubsub": ok}, timeout_s=0.05)

    # The check is still blocked: the answer did not wait for it.
    assert not finished.is_set()
    checks = assert_health(body, code, status="down", failed=("firestore",))
    assert checks["firestore"] == {
        "ok": False,
        "latency_ms": 250.0,
        "error": "timed out after 0.05 s",
    }


def test_a_hung_pubsub_only_degrades(release: threading.Event) -> None:
    body, code = run({"firestore": ok, "pubsub": hanging(release)}, timeout_s=0.05)
    checks = assert_health(body, code, status="degraded", failed=("pubsub",))
    assert checks["pubsub"]["error"] == "timed out after 0.05 s"


def test_checks_run_concurrently() -> None:
    # Each check waits for the other: only concurrent runs can both pass.
    barrier = threading.Barrier(2, timeout=10)

    def meet(timeout_s: float) -> None:
        barrier.wait()

    body, code = run({"firestore": meet, "pubsub": meet}, timeout_s=10)
    assert_health(body, code, status="ok")


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
    body, code = check_health(probe="ready", checks={"firestore": broken}, timeout_s=1, version="v")
    assert_health(body, code, status="down", failed=("firestore",), checks=("firestore",))


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

    def get_topic(self, topic: str, **kwargs: Any) -> None:
        self.calls.append({"topic": topic, **kwargs})


def test_firestore_check_reads_one_document_with_the_deadline_and_no_retries() -> None:
    client = FakeFirestore()
    firestore_check(0.9, client=client)
    assert client.calls == [("health", "probe", {"timeout": 0.9, "retry": None})]


def test_pubsub_check_fetches_the_tasks_topic_with_the_deadline_and_no_retries() -> None:
    client = FakePublisher()
    pubsub_check(0.9, client=client, topic="projects/p/topics/aia-tasks")
    # FastPublisher.get_topic makes one attempt: no retry to pass.
    assert client.calls == [{"topic": "projects/p/topics/aia-tasks", "timeout": 0.9}]
