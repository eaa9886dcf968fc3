"""Task counters buffered per instance and flushed to the metric shards a few times a minute.

Writing a counter shard inside every task's own commit costs a document write
per task (a third of the Firestore bill of an `echo`) and, at thousands of
tasks a second, hot shard documents. Instead each instance adds up what it
saw in memory and, at most once per `flush_s`, writes the sums as `Increment`
transforms to randomly chosen shards in one batch. The shard documents and
`metrics.fold_shards` are unchanged. What an instance that dies without
flushing had counted (at most one and a half `flush_s` of its traffic) is lost, as a
Prometheus counter resets when its process restarts; the figures are
observability, not the ledger of record (the task documents are).
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.operations.metrics import (
    BUCKETS,
    DURATION,
    FINISHED_STATUSES,
    SUBMITTED,
    bucket_field,
    shard_ref,
)

log = logging.getLogger("aia.counters")

# Counts are due after `flush_s`, and the next commit the instance makes carries them.
# A commit of their own waits this much longer (a share of `flush_s`), for an instance
# that went quiet: flushing the moment they fall due would race the commit about to
# carry them, and spend a commit a busy instance never needs.
_QUIET_SHARE = 0.5


@dataclass
class _Durations:
    count: int = 0
    total: float = 0.0
    buckets: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


class TaskCounters:
    """What this instance counted since its last flush, by task type."""

    def __init__(
        self,
        db: Any,
        *,
        shards: int,
        flush_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._shards = shards
        self._flush_s = flush_s
        self._quiet_s = flush_s * (1 + _QUIET_SHARE)
        self._clock = clock
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._submitted: Counter[str] = Counter()
        self._durations: dict[str, _Durations] = {}
        self._last_flush = clock()
        self._timer: threading.Timer | None = None
        atexit.register(self._flush_quietly)

    def _arm(self) -> None:
        """Make sure counts recorded now get flushed even if no request follows (caller locks)."""
        if self._timer is None and self._flush_s > 0:
            self._timer = threading.Timer(self._quiet_s, self._flush_from_timer)
            self._timer.daemon = True
            self._timer.start()

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._timer = None
            left = self._quiet_s - (self._clock() - self._last_flush)
            if left > 0:
                # A commit carried the counts since the timer was set: wait for the rest.
                self._timer = threading.Timer(left, self._flush_from_timer)
                self._timer.daemon = True
                self._timer.start()
                return
        self._flush_quietly()

    def submitted(self, task_type: str, n: int = 1) -> None:
        with self._lock:
            self._submitted[task_type] += n
            self._arm()

    def attempt(self, task_type: str, seconds: float, outcome: str | None) -> None:
        """One finished attempt's run time; `outcome` counts it as finished if terminal."""
        if not math.isfinite(seconds):
            raise ValueError(f"duration must be finite, got {seconds!r}")
        # Durations measured across instances' wall clocks can come out slightly negative.
        seconds = max(0.0, seconds)
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            entry = self._durations.setdefault(task_type, _Durations())
            entry.count += 1
            entry.total += seconds
            if index < len(BUCKETS):
                entry.buckets[bucket_field(BUCKETS[index])] += 1
            if outcome in FINISHED_STATUSES:
                entry.outcomes[outcome] += 1
            self._arm()

    def finished(self, task_type: str, outcome: str) -> None:
        """A task that finished without an attempt (failed unopened, cancelled while queued)."""
        if outcome not in FINISHED_STATUSES:
            return
        with self._lock:
            self._durations.setdefault(task_type, _Durations()).outcomes[outcome] += 1
            self._arm()

    def maybe_flush(self) -> None:
        """Flush if no commit carried the counts since they fell due (called after each request)."""
        if self._clock() - self._last_flush >= self._quiet_s:
            self.flush()

    def ride(self, batch: Any) -> Callable[[bool], None] | None:
        """When a flush is due, add the counts to `batch`, a commit made anyway.

        A busy instance then never spends a commit of its own on counters. The
        answer is to be called with whether the batch was committed (counts of
        a batch that failed are kept for the next flush); None when nothing rode.
        """
        if self._flush_s <= 0 or self._clock() - self._last_flush < self._flush_s:
            return None
        if not self._flushing.acquire(blocking=False):
            return None
        with self._lock:
            submitted, self._submitted = self._submitted, Counter()
            durations, self._durations = self._durations, {}
            self._last_flush = self._clock()
        if not submitted and not durations:
            self._flushing.release()
            return None
        self._stage(batch, submitted, durations)

        def done(committed: bool) -> None:
            try:
                if not committed:
                    self._restore(submitted, durations)
                    with self._lock:
                        self._arm()
            finally:
                self._flushing.release()

        return done

    def flush(self, *, at_exit: bool = False) -> bool:
        """Write everything counted so far in one batch; on failure keep it for next time.

        A timer also flushes `flush_s` after the first count, so a quiet instance
        does not sit on counts (where the platform throttles idle instances the
        timer runs at the next request, or the flush at exit takes them).
        """
        if not self._flushing.acquire(blocking=False):
            return False  # another thread is flushing right now
        try:
            with self._lock:
                submitted, self._submitted = self._submitted, Counter()
                durations, self._durations = self._durations, {}
                self._last_flush = self._clock()
            if not submitted and not durations:
                return True
            try:
                self._write(submitted, durations, at_exit=at_exit)
            except Exception:  # kept for the next flush: a scrape is late, never wrong
                if at_exit:
                    # No next flush; the streams logging writes to may be closed already.
                    return False
                log.warning("counter flush failed; kept for the next one", exc_info=True)
                self._restore(submitted, durations)
                with self._lock:
                    self._arm()
                return False
            return True
        finally:
            self._flushing.release()

    def _write(
        self, submitted: Counter[str], durations: dict[str, _Durations], *, at_exit: bool = False
    ) -> None:
        from shared.clients import EXIT_CALL, WORKER_CALL

        batch = self._db.batch()
        self._stage(batch, submitted, durations)
        batch.commit(**(EXIT_CALL if at_exit else WORKER_CALL).kwargs())

    def _stage(self, batch: Any, submitted: Counter[str], durations: dict[str, _Durations]) -> None:
        from google.cloud.firestore import Increment

        data: dict[str, Any]
        for task_type, n in submitted.items():
            ref = shard_ref(self._db, SUBMITTED, task_type, self._shards)
            batch.set(
                ref, {"metric": SUBMITTED, "type": task_type, "value": Increment(n)}, merge=True
            )
        for task_type, entry in durations.items():
            data = {"metric": DURATION, "type": task_type}
            if entry.count:
                data["count"] = Increment(entry.count)
                data["sum"] = Increment(float(entry.total))
            if entry.buckets:
                data["buckets"] = {k: Increment(v) for k, v in entry.buckets.items()}
            if entry.outcomes:
                data["outcomes"] = {k: Increment(v) for k, v in entry.outcomes.items()}
            batch.set(shard_ref(self._db, DURATION, task_type, self._shards), data, merge=True)

    def _restore(self, submitted: Counter[str], durations: dict[str, _Durations]) -> None:
        with self._lock:
            self._submitted.update(submitted)
            for task_type, entry in durations.items():
                mine = self._durations.setdefault(task_type, _Durations())
                mine.count += entry.count
                mine.total += entry.total
                mine.buckets.update(entry.buckets)
                mine.outcomes.update(entry.outcomes)

    def _flush_quietly(self) -> None:
        # The process is ending: there is no one left to tell of a failure.
        with contextlib.suppress(Exception):
            self.flush(at_exit=True)
