"""Metrics recording, folding and rendering against in-memory fakes."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore import FieldFilter, Increment
from prometheus_client.parser import text_string_to_metric_families

from shared.errors import Unavailable
from shared.operations import metrics
from shared.operations.metrics import (
    BUCKETS,
    DURATION,
    SUBMITTED,
    DurationHistogram,
    MetricsSnapshot,
    collect,
    record_duration,
    record_submitted,
    render_json,
    render_prometheus,
    shard_doc_id,
)
from shared.queries import METRIC_SHARDS, TASKS

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ref:
    collection: str
    doc_id: str


@dataclass
class Writer:
    """Records `set` calls like a WriteBatch or Transaction would queue them."""

    writes: list[tuple[Ref, dict[str, Any], bool]] = field(default_factory=list)

    def set(self, ref: Ref, data: dict[str, Any], merge: bool = False) -> None:
        self.writes.append((ref, data, merge))


@dataclass
class Snap:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


@dataclass
class Agg:
    value: float


class FakeQuery:
    def __init__(self, db: FakeDb, name: str, filters: tuple[tuple[Any, ...], ...] = ()) -> None:
        self.db, self.name, self.filters = db, name, filters

    def document(self, doc_id: str) -> Ref:
        return Ref(self.name, doc_id)

    def where(self, *, filter: FieldFilter) -> FakeQuery:
        assert filter.op_string in ("==", ">=", "<")
        added: tuple[Any, ...] = (filter.field_path, filter.value)
        if filter.op_string != "==":
            added = (filter.field_path, filter.op_string, filter.value)
        return FakeQuery(self.db, self.name, (*self.filters, added))

    def stream(self, timeout: float | None = None) -> list[Snap]:
        assert self.name == METRIC_SHARDS
        self.db.timeouts.append(timeout)
        if self.db.hang is not None:
            self.db.hang.wait(30)
            self.db.hang_ended.set()
        if self.db.fail:
            raise self.db.fail
        return [Snap(d) for d in self.db.shards]

    def count(self, alias: str) -> FakeQuery:
        return self

    def get(self, timeout: float | None = None) -> list[list[Agg]]:
        assert self.name == TASKS
        self.db.timeouts.append(timeout)
        self.db.count_queries.append(self.filters)
        n = sum(all(_matches(t, f) for f in self.filters) for t in self.db.tasks)
        # Like the emulator: an empty count comes back as a double.
        return [[Agg(float(n))]]


def _matches(task: dict[str, Any], condition: tuple[Any, ...]) -> bool:
    if len(condition) == 2:
        return bool(task.get(condition[0]) == condition[1])
    name, op, value = condition
    if not isinstance(task.get(name), str):
        return False  # Firestore's ranges skip documents without the field
    return bool(task[name] >= value if op == ">=" else task[name] < value)


@dataclass
class FakeDb:
    shards: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    count_queries: list[tuple[tuple[Any, ...], ...]] = field(default_factory=list)
    fail: Exception | None = None
    hang: threading.Event | None = None
    hang_ended: threading.Event = field(default_factory=threading.Event)

    def collection(self, name: str) -> FakeQuery:
        return FakeQuery(self, name)


def apply(writes: list[tuple[Ref, dict[str, Any], bool]]) -> list[dict[str, Any]]:
    """Apply merge-sets with Increment transforms the way Firestore would."""
    docs: dict[Ref, dict[str, Any]] = {}

    def merge(into: dict[str, Any], data: dict[str, Any]) -> None:
        for key, value in data.items():
            if isinstance(value, dict):
                merge(into.setdefault(key, {}), value)
            elif isinstance(value, Increment):
                into[key] = into.get(key, 0) + value.value
            else:
                into[key] = value

    for ref, data, is_merge in writes:
        assert is_merge, "shard writes must merge, never replace"
        merge(docs.setdefault(ref, {}), data)
    return list(docs.values())


def test_record_submitted_adds_an_increment_to_a_random_shard_in_the_callers_writer() -> None:
    writer, db = Writer(), FakeDb()
    for _ in range(200):
        record_submitted(writer, db, "echo", shards=4)
    refs = {ref for ref, _, _ in writer.writes}
    assert refs == {Ref(METRIC_SHARDS, shard_doc_id(SUBMITTED, "echo", n)) for n in range(4)}
    _, data, merge = writer.writes[0]
    assert merge is True
    assert data["metric"] == SUBMITTED
    assert data["type"] == "echo"
    assert isinstance(data["value"], Increment)
    assert data["value"].value == 1


def test_shard_doc_ids_never_contain_a_slash() -> None:
    doc_id = shard_doc_id(SUBMITTED, "team/a.b", 3)
    assert "/" not in doc_id
    assert doc_id == "submitted:team%2Fa.b:3"
    writer = Writer()
    record_submitted(writer, FakeDb(), "team/a.b", shards=1)
    assert "/" not in writer.writes[0][0].doc_id
    assert writer.writes[0][1]["type"] == "team/a.b"


def test_shards_must_be_positive() -> None:
    with pytest.raises(ValueError, match="shards"):
        record_submitted(Writer(), FakeDb(), "echo", shards=0)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.0, 0.005), (0.005, 0.005), (0.0051, 0.01), (1.0, 1.0), (299.9, 300.0)],
)
def test_record_duration_increments_the_one_bucket_the_value_falls_in(
    seconds: float, bucket: float
) -> None:
    writer = Writer()
    record_duration(writer, FakeDb(), "echo", seconds, shards=2)
    ref, data, merge = writer.writes[0]
    assert merge is True
    assert ref.doc_id.startswith(f"{DURATION}:echo:")
    assert data["count"].value == 1
    assert data["sum"].value == pytest.approx(seconds)
    assert list(data["buckets"]) == [f"le_{round(bucket * 1000)}ms"]


def test_duration_above_the_last_bound_counts_only_in_inf_count_and_sum() -> None:
    writer = Writer()
    record_duration(writer, FakeDb(), "sleep", 400.0, shards=1)
    _, data, _ = writer.writes[0]
    assert "buckets" not in data
    _, durations, _ = metrics.fold_shards(apply(writer.writes))
    hist = durations["sleep"]
    assert hist.cumulative()[-2] == (BUCKETS[-1], 0)
    assert hist.cumulative()[-1] == (math.inf, 1)
    assert hist.total == 400.0


def test_negative_durations_are_clamped_and_non_finite_ones_rejected() -> None:
    writer = Writer()
    record_duration(writer, FakeDb(), "echo", -0.2, shards=1)
    assert writer.writes[0][1]["sum"].value == 0.0
    with pytest.raises(ValueError, match="finite"):
        record_duration(writer, FakeDb(), "echo", math.nan, shards=1)


def test_folded_shards_add_up_across_shards_and_types() -> None:
    writer, db = Writer(), FakeDb()
    for _ in range(7):
        record_submitted(writer, db, "echo", shards=3)
    for _ in range(2):
        record_submitted(writer, db, "sleep", shards=3)
    for seconds in (0.001, 0.02, 0.02, 3.0, 100.0):
        record_duration(writer, db, "echo", seconds, shards=3)
    submitted, durations, _ = metrics.fold_shards(apply(writer.writes))
    assert submitted == {"echo": 7, "sleep": 2}
    hist = dict(durations["echo"].cumulative())
    assert hist[0.005] == 1
    assert hist[0.025] == 3
    assert hist[2.5] == 3
    assert hist[5.0] == 4
    assert hist[120.0] == 5
    assert hist[math.inf] == 5
    assert durations["echo"].total == pytest.approx(103.041)


def test_a_bound_dropped_from_buckets_folds_into_the_next_larger_one() -> None:
    doc = {"metric": DURATION, "type": "echo", "count": 2, "sum": 0.5, "buckets": {"le_7ms": 2}}
    _, durations, _ = metrics.fold_shards([doc, {"metric": "other"}, {"type": 3}])
    assert dict(durations["echo"].cumulative())[0.005] == 0
    assert dict(durations["echo"].cumulative())[0.01] == 2


def test_collect_counts_live_pairs_as_ints_finished_from_shards_and_reads_shards_once() -> None:
    writer = Writer()
    db = FakeDb(
        tasks=[
            {"status": "queued", "type": "echo", "blocked_by": "concurrency:user-1"},
            {"status": "queued", "type": "echo", "blocked_by": "tenant:max_running"},
            {"status": "waiting", "type": "fail", "blocked_by": "tasks:1"},
            {"status": "failed", "type": "fail"},
        ]
    )
    for _ in range(3):
        record_submitted(writer, db, "echo", shards=2)
    record_duration(writer, db, "echo", 0.2, shards=2, outcome="succeeded")
    record_duration(writer, db, "echo", 0.2, shards=2, outcome="queued")  # a retried attempt
    metrics.record_outcome(writer, db, "fail", "failed", shards=2)
    db.shards = apply(writer.writes)

    snapshot = collect(db, ["echo", "fail"], timeout_s=3.0)

    # Only what waits or runs is aggregated: history never grows a scrape's cost.
    pairs = [q for q in db.count_queries if len(q) == 2 and q[1][0] == "type"]
    assert set(pairs) == {
        (("status", s), ("type", t)) for s in metrics.LIVE_STATUSES for t in ("echo", "fail")
    }
    assert "succeeded" not in metrics.LIVE_STATUSES
    assert len(pairs) == 2 * len(metrics.LIVE_STATUSES)
    # Plus one count per reason a queued task waits for a slot.
    assert len(db.count_queries) == len(pairs) + len(metrics.WAITING_REASONS)
    assert snapshot.waiting == {"concurrency": 1, "tenant_limit": 1}
    assert db.timeouts == [3.0] * (len(db.count_queries) + 1)
    assert snapshot.tasks == {
        (s, t): 2 if (s, t) == ("queued", "echo") else 1 if (s, t) == ("waiting", "fail") else 0
        for s in metrics.LIVE_STATUSES
        for t in ("echo", "fail")
    }
    assert all(type(n) is int for n in snapshot.tasks.values())
    assert snapshot.finished == {
        (s, t): int((s, t) in {("succeeded", "echo"), ("failed", "fail")})
        for s in metrics.FINISHED_STATUSES
        for t in ("echo", "fail")
    }
    assert snapshot.submitted == {"echo": 3, "fail": 0}
    assert snapshot.durations["echo"].count == 2
    assert snapshot.durations["fail"].count == 0


def test_a_scrape_is_cached_for_a_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def counting(db: object, names: list[str], **_: object) -> metrics.MetricsSnapshot:
        calls.append(names)
        return metrics.MetricsSnapshot(types=(), tasks={}, submitted={}, durations={})

    monkeypatch.setattr(metrics, "collect", counting)
    monkeypatch.setattr("shared.clients.firestore_client", object)
    now = [100.0]
    metrics.forget_cached()
    try:
        first = metrics.collect_current(clock=lambda: now[0])
        now[0] += metrics.CACHE_S - 0.1
        assert metrics.collect_current(clock=lambda: now[0]) is first
        assert len(calls) == 1
        now[0] += 0.2
        assert metrics.collect_current(clock=lambda: now[0]) is not first
        assert len(calls) == 2
    finally:
        metrics.forget_cached()


def test_collect_keeps_types_that_only_appear_in_shards() -> None:
    db = FakeDb(shards=[{"metric": SUBMITTED, "type": "retired", "value": 4}])
    snapshot = collect(db, ["echo"])
    assert snapshot.types == ("echo", "retired")
    assert snapshot.submitted == {"echo": 0, "retired": 4}


def test_collect_turns_a_firestore_error_into_unavailable() -> None:
    from google.api_core.exceptions import ServiceUnavailable

    db = FakeDb(fail=ServiceUnavailable("connection refused"))  # type: ignore[no-untyped-call]
    with pytest.raises(Unavailable, match="connection refused"):
        collect(db, ["echo"])


def test_collect_gives_up_at_its_deadline_when_firestore_hangs() -> None:
    release = threading.Event()
    db = FakeDb(hang=release)
    try:
        with pytest.raises(Unavailable, match=r"within 0\.05 s"):
            collect(db, ["echo"], timeout_s=0.05)
        # The scrape ended while the shard read still hung: nothing waited for it.
        assert not db.hang_ended.is_set()
    finally:
        release.set()


def _snapshot() -> MetricsSnapshot:
    counts = [0] * len(BUCKETS)
    counts[0], counts[4] = 2, 1  # two at <= 5 ms, one at <= 100 ms
    return MetricsSnapshot(
        types=("analytics.summary", "echo"),
        tasks={
            (s, t): (1 if (s, t) == ("running", "echo") else 0)
            for s in metrics.LIVE_STATUSES
            for t in ("analytics.summary", "echo")
        },
        submitted={"analytics.summary": 0, "echo": 6},
        durations={
            "analytics.summary": DurationHistogram((0,) * len(BUCKETS), 0, 0.0),
            "echo": DurationHistogram(tuple(counts), 4, 400.06),
        },
        finished={
            (s, t): (5 if (s, t) == ("succeeded", "echo") else 0)
            for s in metrics.FINISHED_STATUSES
            for t in ("analytics.summary", "echo")
        },
    )


def test_prometheus_exposition_parses_back_to_the_snapshot() -> None:
    text = render_prometheus(_snapshot()).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    assert families["aia_tasks"].type == "gauge"
    gauges = {
        (s.labels["status"], s.labels["type"]): s.value for s in families["aia_tasks"].samples
    }
    assert gauges[("running", "echo")] == 1
    assert len(gauges) == 2 * len(metrics.LIVE_STATUSES)
    assert families["aia_tasks_finished"].type == "counter"
    assert 'aia_tasks_finished_total{status="succeeded",type="echo"} 5.0' in text

    assert families["aia_tasks_submitted"].type == "counter"
    assert 'aia_tasks_submitted_total{type="echo"} 6.0' in text

    hist = families["aia_task_duration_seconds"]
    assert hist.type == "histogram"
    echo = {
        (s.name, s.labels.get("le")): s.value for s in hist.samples if s.labels["type"] == "echo"
    }
    assert echo[("aia_task_duration_seconds_bucket", "0.005")] == 2
    assert echo[("aia_task_duration_seconds_bucket", "0.05")] == 2
    assert echo[("aia_task_duration_seconds_bucket", "0.1")] == 3
    assert echo[("aia_task_duration_seconds_bucket", "300.0")] == 3
    assert echo[("aia_task_duration_seconds_bucket", "+Inf")] == 4
    assert echo[("aia_task_duration_seconds_count", None)] == 4
    assert echo[("aia_task_duration_seconds_sum", None)] == pytest.approx(400.06)
    # A fresh registry: no process or platform collectors leak into the output.
    assert "process_" not in text
    assert "python_gc" not in text


def test_json_carries_the_same_figures_as_the_exposition() -> None:
    snapshot = _snapshot()
    body = render_json(snapshot)
    assert body["aia_tasks_finished_total"]["succeeded"]["echo"] == 5
    assert body["aia_tasks"]["running"] == {"analytics.summary": 0, "echo": 1}
    assert "succeeded" not in body["aia_tasks"]
    assert body["aia_tasks_submitted_total"] == {"analytics.summary": 0, "echo": 6}
    echo = body["aia_task_duration_seconds"]["echo"]
    assert echo["count"] == 4
    assert echo["sum"] == pytest.approx(400.06)
    assert len(echo["buckets"]) == len(BUCKETS) + 1

    text = render_prometheus(snapshot).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "aia_task_duration_seconds_bucket":
                hist = body["aia_task_duration_seconds"][sample.labels["type"]]
                assert hist["buckets"][sample.labels["le"]] == sample.value


def test_importing_metrics_pulls_in_neither_google_clients_nor_prometheus() -> None:
    # The submit path and the worker import this module for record_*; they
    # must not pay for prometheus_client, and nothing may do I/O at import.
    code = (
        "import sys, shared.operations.metrics\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'grpc',"
        " 'google.cloud.firestore', 'google.api_core'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
