"""Task metrics: sharded Firestore counters written by the task path, read by `metrics`.

Each (metric, task type, shard) has one document in `METRIC_SHARDS`; writers
pick a shard at random and apply `Increment` transforms inside the caller's
batch, so concurrent instances never read-modify-write and no document takes
more than about `1/shards` of the write rate. Finished tasks (by how they
ended) are counted there too; only the tasks still waiting or running are
counted by Firestore count aggregations, whose cost grows with what they count
— bounded by the backlog, never by history. A scrape is cached for a few
seconds per instance, so many scrapers cost one collection.

Importing this module imports neither a Google client nor prometheus_client:
the submit path and the worker only pay for what they use.
"""

from __future__ import annotations

import bisect
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared.errors import Unavailable
from shared.flow import metrics as flow_metrics
from shared.queries import COUNT_TASKS_BY_STATUS_TYPE, COUNT_WAITING_FOR_SLOTS, METRIC_SHARDS
from shared.tasks.models import TaskStatus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

SUBMITTED = "submitted"
DURATION = "duration"

# Seconds. Covers echo (ms) to sleep's 30 s cap and long handlers; anything
# beyond the last bound still counts in +Inf, `_count` and `_sum`.
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

STATUSES: tuple[str, ...] = tuple(s.value for s in TaskStatus)
# Counted live by aggregation (a backlog); terminal statuses come from counters.
LIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in TaskStatus if not s.terminal)
FINISHED_STATUSES: tuple[str, ...] = tuple(s.value for s in TaskStatus if s.terminal)
CACHE_S = 5.0
# What queued tasks wait for, as `blocked_by` ranges [low, high): a concurrency key's
# slot (any key: a label per key would be unbounded), or the tenant's max_running.
WAITING_REASONS: dict[str, tuple[str, str]] = {
    "concurrency": ("concurrency:", "concurrency;"),
    "tenant_limit": ("tenant:max_running", "tenant:max_running\0"),
}

# Bucket fields are keyed by their bound in whole milliseconds: a plain
# identifier needs no field-path quoting, and a stored bound that is later
# dropped from BUCKETS can still be folded into the next larger one.
_BUCKET_FIELD = re.compile(r"^le_(\d+)ms$")

# Below Prometheus' default 10 s scrape timeout, with room for a busy Firestore: a
# scrape is one count per live status and type (4 x ~20 on the emulator), 8 at a time.
_COLLECT_TIMEOUT_S = 8.0
# Count queries are small, independent RPCs; a shared pool lets one scrape run
# them side by side without starting threads per request.
_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="metrics")


def shard_doc_id(metric: str, task_type: str, shard: int) -> str:
    """Document id of one shard; the type is percent-encoded so ids never hold '/'."""
    return f"{metric}:{quote(task_type, safe='')}:{shard}"


def bucket_field(bound: float) -> str:
    return f"le_{round(bound * 1000)}ms"


def shard_ref(db: Any, metric: str, task_type: str, shards: int) -> Any:
    if shards < 1:
        raise ValueError("shards must be at least 1")
    shard = random.randrange(shards)  # noqa: S311 - spreads load, not a secret
    return db.collection(METRIC_SHARDS).document(shard_doc_id(metric, task_type, shard))


def record_submitted(writer: Any, db: Any, task_type: str, *, shards: int) -> None:
    """Count one submitted task of `task_type` inside the caller's batch or transaction."""
    from google.cloud.firestore import Increment

    ref = shard_ref(db, SUBMITTED, task_type, shards)
    data = {"metric": SUBMITTED, "type": task_type, "value": Increment(1)}
    writer.set(ref, data, merge=True)


def record_duration(
    writer: Any,
    db: Any,
    task_type: str,
    seconds: float,
    *,
    shards: int,
    outcome: str | None = None,
) -> None:
    """Observe one attempt's run time (and how it ended) inside the caller's batch."""
    from google.cloud.firestore import Increment

    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds!r}")
    # Durations measured across instances' wall clocks can come out slightly negative.
    seconds = max(0.0, seconds)
    data: dict[str, Any] = {
        "metric": DURATION,
        "type": task_type,
        "count": Increment(1),
        "sum": Increment(float(seconds)),
    }
    # Only the one bucket the value falls in is stored; `collect` makes them
    # cumulative. Values above the last bound live in `count` alone (+Inf).
    index = bisect.bisect_left(BUCKETS, seconds)
    if index < len(BUCKETS):
        data["buckets"] = {bucket_field(BUCKETS[index]): Increment(1)}
    if outcome in FINISHED_STATUSES:
        # Finished tasks by how they ended: counted here, never by scanning tasks.
        data["outcomes"] = {outcome: Increment(1)}
    writer.set(shard_ref(db, DURATION, task_type, shards), data, merge=True)


def record_outcome(writer: Any, db: Any, task_type: str, outcome: str, *, shards: int) -> None:
    """Count a task that finished without an attempt (e.g. failed unopened)."""
    from google.cloud.firestore import Increment

    data = {"metric": DURATION, "type": task_type, "outcomes": {outcome: Increment(1)}}
    writer.set(shard_ref(db, DURATION, task_type, shards), data, merge=True)


@dataclass(frozen=True)
class DurationHistogram:
    """Observations per bucket of `BUCKETS` (not cumulative), plus count and sum."""

    counts: tuple[int, ...]
    count: int
    total: float

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) including +Inf, as Prometheus wants."""
        running = 0
        out: list[tuple[float, int]] = []
        for bound, n in zip(BUCKETS, self.counts, strict=True):
            running += n
            out.append((bound, running))
        out.append((math.inf, self.count))
        return out


EMPTY_HISTOGRAM = DurationHistogram(counts=(0,) * len(BUCKETS), count=0, total=0.0)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every figure one scrape reports."""

    types: tuple[str, ...]
    tasks: Mapping[tuple[str, str], int]  # (live status, type) -> tasks now in that status
    submitted: Mapping[str, int]
    durations: Mapping[str, DurationHistogram]
    finished: Mapping[tuple[str, str], int] = dataclass_field(default_factory=dict)
    # Tokens and refused admissions (shared.flow), from the same shard documents.
    flow: flow_metrics.FlowFigures = dataclass_field(default_factory=flow_metrics.FlowFigures)
    waiting: Mapping[str, int] = dataclass_field(default_factory=dict)  # reason -> queued tasks


def _as_int(value: Any) -> int:
    # The emulator answers 0.0 for an empty count, and increments may be doubles.
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0


def fold_shards(
    docs: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, int], dict[str, DurationHistogram], dict[tuple[str, str], int]]:
    """Sum shard documents into submitted counts, histograms and finished counts per type."""
    submitted: dict[str, int] = {}
    finished: dict[tuple[str, str], int] = {}
    counts: dict[str, list[int]] = {}
    totals: dict[str, tuple[int, float]] = {}
    for doc in docs:
        metric, task_type = doc.get("metric"), doc.get("type")
        if not isinstance(task_type, str):
            continue
        if metric == SUBMITTED:
            submitted[task_type] = submitted.get(task_type, 0) + _as_int(doc.get("value"))
        elif metric == DURATION:
            outcomes = doc.get("outcomes")
            for status, value in (outcomes if isinstance(outcomes, dict) else {}).items():
                if status in FINISHED_STATUSES:
                    key = (status, task_type)
                    finished[key] = finished.get(key, 0) + _as_int(value)
            per_bucket = counts.setdefault(task_type, [0] * len(BUCKETS))
            buckets = doc.get("buckets")
            for field, value in (buckets if isinstance(buckets, dict) else {}).items():
                match = _BUCKET_FIELD.match(field)
                if match is None:
                    continue
                index = bisect.bisect_left(BUCKETS, int(match.group(1)) / 1000)
                if index < len(BUCKETS):
                    per_bucket[index] += _as_int(value)
            count, total = totals.get(task_type, (0, 0.0))
            raw_sum = doc.get("sum")
            add = float(raw_sum) if isinstance(raw_sum, int | float) else 0.0
            totals[task_type] = (count + _as_int(doc.get("count")), total + add)
    durations = {
        t: DurationHistogram(counts=tuple(c), count=totals[t][0], total=totals[t][1])
        for t, c in counts.items()
    }
    return submitted, durations, finished


def _count(db: Any, status: str, task_type: str, timeout_s: float) -> int:
    from google.cloud.firestore import FieldFilter

    query = db.collection(COUNT_TASKS_BY_STATUS_TYPE.collection)
    for field, value in zip(COUNT_TASKS_BY_STATUS_TYPE.equals, (status, task_type), strict=True):
        query = query.where(filter=FieldFilter(field, "==", value))
    result = query.count(alias="n").get(timeout=timeout_s)
    return _as_int(result[0][0].value) if result and result[0] else 0


def _count_waiting(db: Any, reason: str, timeout_s: float) -> int:
    from google.cloud.firestore import FieldFilter

    spec = COUNT_WAITING_FOR_SLOTS
    low, high = WAITING_REASONS[reason]
    query = db.collection(spec.collection).where(
        filter=FieldFilter(spec.equals[0], "==", TaskStatus.QUEUED.value)
    )
    query = query.where(filter=FieldFilter("blocked_by", ">=", low)).where(
        filter=FieldFilter("blocked_by", "<", high)
    )
    result = query.count(alias="n").get(timeout=timeout_s)
    return _as_int(result[0][0].value) if result and result[0] else 0


def _shard_docs(db: Any, timeout_s: float) -> list[dict[str, Any]]:
    return [snap.to_dict() or {} for snap in db.collection(METRIC_SHARDS).stream(timeout=timeout_s)]


def collect(
    db: Any, task_types: list[str], *, timeout_s: float = _COLLECT_TIMEOUT_S
) -> MetricsSnapshot:
    """Read every shard (one stream) and count tasks per (status, type), concurrently."""
    from google.api_core.exceptions import GoogleAPICallError, RetryError

    pairs = [(s, t) for s in LIVE_STATUSES for t in task_types]
    shard_future = _POOL.submit(_shard_docs, db, timeout_s)
    count_futures: dict[tuple[str, str], Future[int]] = {
        pair: _POOL.submit(_count, db, pair[0], pair[1], timeout_s) for pair in pairs
    }
    waiting_futures = {
        reason: _POOL.submit(_count_waiting, db, reason, timeout_s) for reason in WAITING_REASONS
    }
    every: list[Future[Any]] = [shard_future, *count_futures.values(), *waiting_futures.values()]
    # One deadline for the whole scrape (each RPC also carries it), and the
    # first failure ends the wait: a scrape is all or nothing.
    done, pending = wait(every, timeout=timeout_s, return_when=FIRST_EXCEPTION)
    for future in pending:
        future.cancel()
    failed = next((f.exception() for f in done if f.exception() is not None), None)
    if isinstance(failed, GoogleAPICallError | RetryError):
        first_line = (str(failed).splitlines() or [type(failed).__name__])[0][:200]
        raise Unavailable(f"Firestore did not answer the metrics queries: {first_line}") from failed
    if failed is not None:
        raise failed
    if pending:
        raise Unavailable(f"Firestore did not answer the metrics queries within {timeout_s:g} s")
    docs = shard_future.result()
    tasks = {pair: future.result() for pair, future in count_futures.items()}
    submitted, durations, finished = fold_shards(docs)
    # Types seen in shards but no longer registered keep their history visible.
    types = tuple(sorted(set(task_types) | set(submitted) | set(durations)))
    return MetricsSnapshot(
        types=types,
        tasks=tasks,
        submitted={t: submitted.get(t, 0) for t in types},
        durations={t: durations.get(t, EMPTY_HISTOGRAM) for t in types},
        finished={(s, t): finished.get((s, t), 0) for s in FINISHED_STATUSES for t in types},
        flow=flow_metrics.fold(docs),
        waiting={reason: future.result() for reason, future in waiting_futures.items()},
    )


_cache_lock = threading.Lock()
_cached: tuple[float, MetricsSnapshot] | None = None


def collect_current(*, clock: Callable[[], float] = time.monotonic) -> MetricsSnapshot:
    """Snapshot of this deployment, at most `CACHE_S` old: concurrent scrapes share one."""
    global _cached  # noqa: PLW0603 - one cached snapshot per instance
    with _cache_lock:
        if _cached is not None and clock() - _cached[0] < CACHE_S:
            return _cached[1]
        from shared import providers
        from shared.clients import firestore_client
        from shared.config import get_settings

        registry = providers.task_registry()
        names = registry.names(include_diagnostic=get_settings().diagnostic_tasks)
        snapshot = collect(firestore_client(), names)
        _cached = (clock(), snapshot)
        return snapshot


def forget_cached() -> None:
    """Drop the cached snapshot (tests, or after a configuration change)."""
    global _cached  # noqa: PLW0603 - one cached snapshot per instance
    with _cache_lock:
        _cached = None


def _le(bound: float) -> str:
    # Prometheus' spelling of a bucket bound: "+Inf", else the shortest float repr.
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    tasks = GaugeMetricFamily(
        "aia_tasks",
        "Tasks currently waiting or running, by status and type.",
        labels=["status", "type"],
    )
    for (status, task_type), n in sorted(snapshot.tasks.items()):
        tasks.add_metric([status, task_type], n)
    yield tasks
    waiting = GaugeMetricFamily(
        "aia_tasks_waiting",
        "Queued tasks waiting for a concurrency slot, by reason (concurrency key, tenant limit).",
        labels=["reason"],
    )
    for reason, n in sorted(snapshot.waiting.items()):
        waiting.add_metric([reason], n)
    yield waiting
    finished = CounterMetricFamily(
        "aia_tasks_finished",
        "Tasks that finished, by final status and type.",
        labels=["status", "type"],
    )
    for (status, task_type), n in sorted(snapshot.finished.items()):
        finished.add_metric([status, task_type], n)
    yield finished
    submitted = CounterMetricFamily(
        "aia_tasks_submitted", "Tasks accepted by submit, by type.", labels=["type"]
    )
    for task_type, n in sorted(snapshot.submitted.items()):
        submitted.add_metric([task_type], n)
    yield submitted
    durations = HistogramMetricFamily(
        "aia_task_duration_seconds",
        "Run time of finished task attempts, by type.",
        labels=["type"],
    )
    for task_type, hist in sorted(snapshot.durations.items()):
        buckets = [(_le(bound), n) for bound, n in hist.cumulative()]
        durations.add_metric([task_type], buckets, hist.total)
    yield durations
    yield from flow_metrics.families(snapshot.flow)


def render_prometheus(snapshot: MetricsSnapshot) -> bytes:
    """Prometheus text exposition (`prometheus_client.CONTENT_TYPE_LATEST`)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    class SnapshotCollector(Collector):
        def collect(self) -> Iterable[Metric]:
            return _families(snapshot)

    # A fresh registry per scrape: no process-wide state, no default collectors.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector())
    return bytes(generate_latest(registry))


def render_json(snapshot: MetricsSnapshot) -> dict[str, Any]:
    """The same figures as `render_prometheus`, keyed by metric name."""
    tasks: dict[str, dict[str, int]] = {s: {} for s in LIVE_STATUSES}
    for (status, task_type), n in sorted(snapshot.tasks.items()):
        tasks.setdefault(status, {})[task_type] = n
    finished: dict[str, dict[str, int]] = {s: {} for s in FINISHED_STATUSES}
    for (status, task_type), n in sorted(snapshot.finished.items()):
        finished.setdefault(status, {})[task_type] = n
    return {
        "aia_tasks": tasks,
        "aia_tasks_waiting": dict(sorted(snapshot.waiting.items())),
        "aia_tasks_finished_total": finished,
        "aia_tasks_submitted_total": dict(sorted(snapshot.submitted.items())),
        "aia_task_duration_seconds": {
            task_type: {
                "count": hist.count,
                "sum": hist.total,
                "buckets": {_le(bound): n for bound, n in hist.cumulative()},
            }
            for task_type, hist in sorted(snapshot.durations.items())
        },
        **flow_metrics.as_json(snapshot.flow),
    }
