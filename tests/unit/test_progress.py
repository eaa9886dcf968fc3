"""Progress coalescing: at most one write per second per task, the latest report wins."""

from __future__ import annotations

import threading
from typing import Any

from shared.tasks.progress import ProgressWriter


class Store:
    def __init__(self, *, keep: bool = True) -> None:
        self.written: list[dict[str, Any]] = []
        self.keep = keep
        self.wrote = threading.Event()

    def record_progress(self, lease: Any, progress: dict[str, Any]) -> bool:
        self.written.append(dict(progress))
        self.wrote.set()
        return self.keep


def report(fraction: float, message: str = "m", **meta: Any) -> tuple[Any, ...]:
    return ("progress", fraction, message, meta)


def test_a_burst_is_one_write_now_and_the_latest_at_the_end() -> None:
    now = [0.0]
    store = Store()
    writer = ProgressWriter(store, object(), interval_s=1000.0, clock=lambda: now[0])
    for i in range(1, 1001):
        writer.offer(report(i / 1000, f"step {i}", step=i))
    assert [w["fraction"] for w in store.written] == [0.001]  # the first, at once
    writer.close()  # the last report of the burst is not lost
    assert [w["message"] for w in store.written] == ["step 1", "step 1000"]
    assert store.written[-1]["metadata"] == {"step": 1000}


def test_reports_a_second_apart_are_each_written() -> None:
    now = [0.0]
    store = Store()
    writer = ProgressWriter(store, object(), interval_s=1.0, clock=lambda: now[0])
    for i in range(5):
        writer.offer(report(i / 10))
        now[0] += 1.0
    writer.close()
    assert [w["fraction"] for w in store.written] == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_within_an_attempt_the_fraction_never_goes_back() -> None:
    now = [0.0]
    store = Store()
    writer = ProgressWriter(store, object(), interval_s=1.0, clock=lambda: now[0])
    writer.offer(report(0.6))
    now[0] += 2
    writer.offer(report(0.2))
    writer.close()
    assert [w["fraction"] for w in store.written] == [0.6, 0.6]


def test_a_lost_lease_stops_the_writes() -> None:
    now = [0.0]
    store = Store(keep=False)
    writer = ProgressWriter(store, object(), interval_s=1.0, clock=lambda: now[0])
    writer.offer(report(0.1))
    now[0] += 5
    writer.offer(report(0.2))
    writer.close()
    assert len(store.written) == 1


def test_unusable_reports_and_other_events_are_ignored() -> None:
    store = Store()
    writer = ProgressWriter(store, object(), interval_s=1.0)
    writer.offer(("charge", 5, "tokens"))
    writer.offer(report(1.5))
    writer.offer(("progress", 0.5, "m", {"x": object()}))
    writer.offer(("progress", 0.5, "m", {"blob": "x" * 5000}))
    writer.close()
    assert store.written == []


def test_the_timer_writes_the_pending_report_when_the_interval_passes() -> None:
    store = Store()
    writer = ProgressWriter(store, object(), interval_s=0.05)
    writer.offer(report(0.1))
    store.wrote.clear()
    writer.offer(report(0.9, "late"))
    assert store.wrote.wait(10), "the pending report was never written"
    assert store.written[-1]["message"] == "late"
    writer.close()
