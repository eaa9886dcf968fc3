"""Buffered task counters: summed per instance, flushed at most once per interval, never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.operations import metrics
from shared.operations.counters import TaskCounters
from tests.unit.test_metrics import FakeDb, Ref, Writer, apply


@dataclass
class Batches:
    """A db whose batches record their writes, and fail on demand."""

    db: FakeDb = field(default_factory=FakeDb)
    committed: list[Writer] = field(default_factory=list)
    fail_next: int = 0

    def collection(self, name: str) -> Any:
        return self.db.collection(name)

    def batch(self) -> Any:
        outer = self

        class Batch(Writer):
            def commit(self, **_: Any) -> list[Any]:
                if outer.fail_next:
                    outer.fail_next -= 1
                    raise RuntimeError("firestore is down")
                outer.committed.append(self)
                return []

        return Batch()

    def shards(self) -> list[dict[str, Any]]:
        writes: list[tuple[Ref, dict[str, Any], bool]] = []
        for batch in self.committed:
            writes += batch.writes
        return apply(writes)


def test_counts_are_summed_and_written_once_per_interval() -> None:
    now = [0.0]
    db = Batches()
    counters = TaskCounters(db, shards=4, flush_s=10.0, clock=lambda: now[0])
    for _ in range(500):
        counters.submitted("echo")
        counters.attempt("echo", 0.004, "succeeded")
        counters.maybe_flush()
    assert db.committed == []  # 500 tasks within the interval: no counter write yet
    now[0] += 10.0
    counters.maybe_flush()
    assert db.committed == []  # due, but the next commit made anyway may carry them
    now[0] += 5.0
    counters.maybe_flush()
    assert len(db.committed) == 1  # none did: the instance went quiet, so one of their own
    submitted, durations, finished = metrics.fold_shards(db.shards())
    assert submitted == {"echo": 500}
    assert durations["echo"].count == 500
    assert durations["echo"].counts[0] == 500  # every one in the 5 ms bucket
    assert finished[("succeeded", "echo")] == 500


def test_a_failed_flush_keeps_its_counts_for_the_next_one() -> None:
    db = Batches(fail_next=1)
    counters = TaskCounters(db, shards=2, flush_s=0.0)
    counters.submitted("echo", 3)
    counters.finished("echo", "cancelled")
    assert counters.flush() is False
    counters.submitted("echo", 2)
    assert counters.flush() is True
    submitted, _, finished = metrics.fold_shards(db.shards())
    assert submitted == {"echo": 5}
    assert finished[("cancelled", "echo")] == 1


def test_retries_count_as_attempts_but_not_as_finished() -> None:
    db = Batches()
    counters = TaskCounters(db, shards=1, flush_s=0.0)
    counters.attempt("fail", 0.2, "queued")  # retried
    counters.attempt("fail", 0.2, "failed")
    counters.flush()
    _, durations, finished = metrics.fold_shards(db.shards())
    assert durations["fail"].count == 2
    assert finished == {("failed", "fail"): 1}


def test_a_duration_that_is_not_finite_is_refused() -> None:
    counters = TaskCounters(Batches(), shards=1, flush_s=0.0)
    with pytest.raises(ValueError, match="finite"):
        counters.attempt("echo", float("nan"), None)


def test_counts_due_ride_in_a_commit_made_anyway_and_stay_if_it_fails() -> None:
    now = [0.0]
    db = Batches()
    counters = TaskCounters(db, shards=2, flush_s=10.0, clock=lambda: now[0])
    counters.submitted("echo", 4)
    carrier = Writer()
    assert counters.ride(carrier) is None  # not due yet: the task's batch carries nothing
    assert carrier.writes == []
    now[0] += 10.0
    done = counters.ride(carrier)
    assert done is not None
    assert carrier.writes  # the counts are in the task's own batch: no commit of theirs
    done(False)  # ... which failed: they are kept
    assert counters.ride(Writer()) is None  # not due again until the next interval
    now[0] += 10.0
    landed = Writer()
    done = counters.ride(landed)
    assert done is not None
    done(True)
    assert db.committed == []  # never a commit of the counters' own
    submitted, _, _ = metrics.fold_shards(apply(landed.writes))
    assert submitted == {"echo": 4}
    assert counters.flush() is True  # nothing left over
    assert db.committed == []


def test_a_busy_instance_never_spends_a_commit_on_counters() -> None:
    """Requests every 50 ms, each making a commit that offers a ride, then `maybe_flush`."""
    now = [0.0]
    db = Batches()
    counters = TaskCounters(db, shards=2, flush_s=10.0, clock=lambda: now[0])
    carried: list[Writer] = []
    for _ in range(2000):  # 100 s: ten intervals
        counters.submitted("echo")
        carrier = Writer()
        done = counters.ride(carrier)
        if done is not None:
            done(True)
            carried.append(carrier)
        now[0] += 0.05
        counters.maybe_flush()  # due during the request: still left for the next ride
    assert db.committed == []
    assert len(carried) == 9  # one ride each 10 s, from 10 s to 90 s
    assert counters.flush() is True  # what the last 10 s counted
    writes = [w for batch in [*carried, *db.committed] for w in batch.writes]
    submitted, _, _ = metrics.fold_shards(apply(writes))
    assert submitted == {"echo": 2000}
