"""Refused-admission counts: written at once, then at most once per interval, never stranded."""

from __future__ import annotations

import threading
from typing import Any

from shared.flow.metrics import RefusalCounter, fold
from tests.unit.test_counters import Batches


class Signalling(Batches):
    """Batches that also signal each commit, for the timer's flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = threading.Event()

    def batch(self) -> Any:
        inner = super().batch()
        commit = inner.commit

        def signalled(**kwargs: Any) -> Any:
            out = commit(**kwargs)
            self.flushed.set()
            return out

        inner.commit = signalled
        return inner


def _refused(db: Batches) -> dict[tuple[str, str], int]:
    return dict(fold(db.shards()).refused)


def test_the_first_refusal_is_written_at_once_and_later_ones_once_per_interval() -> None:
    now = [0.0]
    db = Batches()
    counter = RefusalCounter(shards=4, flush_s=3600.0, clock=lambda: now[0])
    counter.note("t1", "rate")
    assert counter.flush_if_due(db)
    for _ in range(50):
        counter.note("t1", "rate")
        counter.note("t2", "budget")
        assert not counter.flush_if_due(db)
    assert _refused(db) == {("t1", "rate"): 1}
    now[0] += 3600.0
    assert counter.flush_if_due(db)
    assert _refused(db) == {("t1", "rate"): 51, ("t2", "budget"): 50}


def test_counts_not_yet_due_are_flushed_by_a_timer_when_no_request_follows() -> None:
    db = Signalling()
    counter = RefusalCounter(shards=4, flush_s=0.05)
    counter.note("t1", "rate")
    assert counter.flush_if_due(db)
    db.flushed.clear()
    counter.note("t1", "rate")
    assert not counter.flush_if_due(db)  # inside the interval: left to the timer
    assert db.flushed.wait(timeout=30.0), "the pending refusal was never flushed"
    assert _refused(db) == {("t1", "rate"): 2}
    assert counter.pending() == {}


def test_a_failed_flush_keeps_its_counts_and_retries_by_itself() -> None:
    db = Signalling()
    db.fail_next = 1
    counter = RefusalCounter(shards=4, flush_s=0.05)
    counter.note("t1", "budget")
    assert not counter.flush_if_due(db)
    assert counter.pending() == {("t1", "budget"): 1}
    assert db.flushed.wait(timeout=30.0), "the kept refusal was never retried"
    assert _refused(db) == {("t1", "budget"): 1}
