"""The platform benchmark's pure parts: percentiles, verdicts, RPC bookkeeping, cost, parsing.

Nothing here times anything: the figures themselves are only ever ratios within a run.
"""

from __future__ import annotations

import http.client
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.cloud.firestore_v1.types import document, firestore, write
from google.cloud.firestore_v1.types.aggregation_result import AggregationResult
from google.protobuf import timestamp_pb2
from google.pubsub_v1 import types as pubsub

from bench import cost, harness, stats
from bench.cold_probe import FIRST_REQUEST_MARKER
from bench.cold_start_bench import import_group, median_profile, parse_importtime, top_imports
from bench.harness import stat_cpu_ticks
from bench.platform_bench import RouteFigures, _blocks
from bench.rpc_counter import (
    FIRESTORE,
    PUBLISHER,
    HttpCounter,
    RequestTally,
    Tally,
    _clean_metadata,
    short_name,
)

COMMIT = FIRESTORE + "Commit"
BATCH_GET = FIRESTORE + "BatchGetDocuments"
GET_DOCUMENT = FIRESTORE + "GetDocument"
RUN_QUERY = FIRESTORE + "RunQuery"
AGGREGATE = FIRESTORE + "RunAggregationQuery"
PUBLISH = PUBLISHER + "Publish"
DOC = "projects/p/databases/(default)/documents/tasks/t1"

# --- stats ------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    samples = [float(x) for x in range(1, 11)]
    assert stats.percentile(samples, 0.5) == pytest.approx(5.5)
    assert stats.percentile(samples, 0.99) == pytest.approx(9.91)
    assert stats.percentile(samples, 0.0) == 1.0
    assert stats.percentile(samples, 1.0) == 10.0
    assert stats.percentile(list(reversed(samples)), 0.5) == pytest.approx(5.5)
    assert stats.percentile([7.0], 0.99) == 7.0


@pytest.mark.parametrize("q", [-0.1, 1.01])
def test_percentile_refuses_quantiles_outside_the_unit_interval(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        stats.percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        stats.percentile([], 0.5)


def test_median_spread_takes_the_median_of_each_runs_figures() -> None:
    runs = [stats.Spread(10, 1.0, 10.0), stats.Spread(10, 3.0, 99.0), stats.Spread(10, 2.0, 20.0)]
    merged = stats.median_spread(runs)
    # One disturbed run (p99 99) does not move the figure.
    assert (merged.n, merged.p50, merged.p99) == (30, 2.0, 20.0)
    spread = stats.Spread.of([1.0, 2.0, 3.0])
    assert (spread.n, spread.p50) == (3, 2.0)
    assert spread.p99 == pytest.approx(2.98)


def test_ratio_with_a_zero_baseline() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(0.0, 0.0) == 0.0
    assert stats.ratio(1.0, 0.0) == math.inf


@pytest.mark.parametrize(
    ("kind", "value", "baseline", "limit", "measure", "met"),
    [
        ("max-ratio", 13.0, 10.0, 1.3, 1.3, True),
        ("max-ratio", 13.1, 10.0, 1.3, 1.31, False),
        ("min-ratio", 8.0, 10.0, 0.8, 0.8, True),
        ("min-ratio", 7.9, 10.0, 0.8, 0.79, False),
        ("max", 3.0, None, 3.0, 3.0, True),
        ("max", 3.01, None, 3.0, 3.01, False),
        ("max-delta", 460.0, 100.0, 400.0, 360.0, True),
        ("max-delta", 560.0, 100.0, 400.0, 460.0, False),
    ],
)
def test_targets(
    kind: str, value: float, baseline: float | None, limit: float, measure: float, met: bool
) -> None:
    target = stats.Target("t", value, baseline, kind, limit)
    assert target.measure == pytest.approx(measure)
    assert target.met is met
    assert target.mark() == ("✓" if met else "✗")
    assert target.to_json()["met"] is met


def test_a_ratio_target_needs_a_baseline() -> None:
    with pytest.raises(ValueError, match="needs a baseline"):
        _ = stats.Target("t", 1.0, None, "max-ratio", 1.3).measure


def test_render_table_aligns_columns() -> None:
    text = stats.render_table(["name", "n"], [["a", "1"], ["longer", "100"]])
    assert text.splitlines() == ["name      n", "------  ---", "a         1", "longer  100"]


# --- the RPC counter's bookkeeping ------------------------------------------------


def _raw(message: Any) -> bytes:
    serialized: bytes = type(message).serialize(message)
    return serialized


def test_tally_counts_writes_by_kind() -> None:
    increment = write.DocumentTransform.FieldTransform(
        field_path="n", increment=document.Value(integer_value=1)
    )
    writes = [
        write.Write(update=document.Document(name=DOC), current_document={"exists": False}),
        write.Write(
            update=document.Document(name=DOC),
            current_document={"update_time": timestamp_pb2.Timestamp(seconds=1)},
        ),
        write.Write(
            update=document.Document(name=DOC + "x"), update_transforms=[increment, increment]
        ),
        write.Write(delete=DOC),
    ]
    tally = Tally()
    tally.record_call(COMMIT)
    tally.record_request(COMMIT, _raw(firestore.CommitRequest(writes=writes)))
    assert (tally.writes, tally.creates, tally.conditional, tally.transforms) == (4, 1, 1, 2)
    assert tally.commits() == 1
    assert tally.calls == {"Firestore/Commit": 1}


def test_tally_counts_documents_read() -> None:
    tally = Tally()
    found = firestore.BatchGetDocumentsResponse(found=document.Document(name=DOC))
    missing = firestore.BatchGetDocumentsResponse(missing=DOC)
    tally.record_response(BATCH_GET, _raw(found))
    tally.record_response(BATCH_GET, _raw(missing))
    # A query's stream ends with a response holding only a read time: no document.
    tally.record_response(RUN_QUERY, _raw(firestore.RunQueryResponse(document={"name": DOC})))
    tally.record_response(RUN_QUERY, _raw(firestore.RunQueryResponse(skipped_results=0)))
    aggregated = firestore.RunAggregationQueryResponse(result=AggregationResult())
    tally.record_response(AGGREGATE, _raw(aggregated))
    # A unary get answers with the document, or refuses with NOT_FOUND.
    tally.record_response(GET_DOCUMENT, _raw(document.Document(name=DOC)))
    tally.record_error(GET_DOCUMENT, "NOT_FOUND")
    tally.record_error(GET_DOCUMENT, "UNAVAILABLE")
    assert (tally.documents_read, tally.missing_read, tally.aggregations) == (3, 2, 1)
    assert tally.reads() == 6


def test_tally_counts_published_bytes_with_the_billing_minimum() -> None:
    request = pubsub.PublishRequest(
        topic="projects/p/topics/t",
        messages=[
            pubsub.PubsubMessage(data=b"x" * 10, attributes={"ab": "cd"}),
            pubsub.PubsubMessage(data=b"y" * 2000),
        ],
    )
    tally = Tally()
    tally.record_request(PUBLISH, _raw(request))
    assert tally.published == 2
    assert tally.published_bytes == 14 + 2000
    assert tally.billed_publish_bytes == 1000 + 2000


def test_tally_difference_is_what_happened_in_between() -> None:
    tally = Tally()
    tally.record_call(COMMIT)
    tally.record_seconds(COMMIT, 0.5)
    before = tally.copy()
    tally.record_call(COMMIT)
    tally.record_call(BATCH_GET)
    tally.record_seconds(COMMIT, 0.25)
    tally.record_error(COMMIT, "ALREADY_EXISTS")
    tally.record_response(BATCH_GET, _raw(firestore.BatchGetDocumentsResponse(missing=DOC)))
    diff = tally.minus(before)
    assert diff.calls == {"Firestore/Commit": 1, "Firestore/BatchGetDocuments": 1}
    assert diff.seconds == {"Firestore/Commit": pytest.approx(0.25)}
    assert diff.errors == {"Firestore/Commit ALREADY_EXISTS": 1}
    assert diff.missing_read == 1
    assert before.calls == {"Firestore/Commit": 1}  # the copy did not move
    assert diff.to_json()["commits"] == 1


def test_tally_ignores_other_services_payloads() -> None:
    tally = Tally()
    tally.record_request("/google.pubsub.v1.Subscriber/Pull", b"\x00garbage")
    tally.record_response(PUBLISH, b"\x00garbage")
    assert tally.to_json()["reads"] == 0


def test_short_names_and_metadata() -> None:
    assert short_name(COMMIT) == "Firestore/Commit"
    assert short_name(PUBLISH) == "Publisher/Publish"
    kept = _clean_metadata(
        [
            ("authorization", "Bearer owner"),
            ("user-agent", "grpc-python"),
            (":authority", "x"),
            ("grpc-accept-encoding", "gzip"),
            ("grpc-status-details-bin", b"\x01"),
            ("x-goog-request-params", "database=x"),
        ]
    )
    assert kept == [
        ("authorization", "Bearer owner"),
        ("grpc-status-details-bin", b"\x01"),
        ("x-goog-request-params", "database=x"),
    ]
    assert _clean_metadata(None) == []


def test_request_tally() -> None:
    tally = RequestTally()
    tally.record(202, 0.01)
    before = tally.copy()
    tally.record(202, 0.02)
    tally.record(500, 0.03)
    tally.failures += 1
    diff = tally.minus(before)
    assert diff.count == 3
    assert diff.statuses == {202: 1, 500: 1}
    assert diff.seconds == [0.02, 0.03]
    assert diff.to_json()["wall_s_total"] == pytest.approx(0.05)


# --- cost -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wall", "billed"), [(0.001, 0.1), (0.1, 0.1), (0.1000001, 0.2), (0.3, 0.3), (0.0, 0.1)]
)
def test_billed_seconds_round_up_to_the_quantum(wall: float, billed: float) -> None:
    assert cost.billed_seconds(wall) == pytest.approx(billed)


def test_concurrent_requests_share_instance_time_but_never_below_their_cpu() -> None:
    size = cost.FunctionSize(vcpu=1.0, gib=1.0, concurrency=4)
    # 8 requests of 0.2 s, 4 at a time: 0.4 instance-seconds, unless the CPU needed more.
    assert cost.instance_seconds(cost.Invocations("w", [0.2] * 8, size)) == pytest.approx(0.4)
    cpu_bound = cost.Invocations("w", [0.2] * 8, size, cpu_s=1.2)
    assert cost.instance_seconds(cpu_bound) == pytest.approx(1.2)
    one_at_a_time = cost.Invocations("w", [0.2] * 8, cost.FunctionSize(1.0, 1.0))
    assert cost.instance_seconds(one_at_a_time) == pytest.approx(1.6)


def test_cost_lines_per_million() -> None:
    counted = cost.Counted(
        tasks=10,
        reads=20,
        writes=50,
        ttl_deletes=10,
        publish_billed_bytes=10_000,
        deliveries=10,
        delivery_billed_bytes=10_000,
        invocations=[
            cost.Invocations("submit", [0.03] * 10, cost.FunctionSize(1.0, 0.5)),
            cost.Invocations("worker", [0.15] * 10, cost.FunctionSize(1.0, 1.0)),
        ],
        log_bytes=0,
        spans=50,
    )
    lines = {line.item: line for line in cost.lines(counted)}
    assert lines["Cloud Trace spans"].quantity_per_task == 5
    assert lines["Cloud Trace spans"].usd_per_million == pytest.approx(1.00)
    assert lines["Firestore reads"].quantity_per_task == 2
    assert lines["Firestore reads"].usd_per_million == pytest.approx(1.20)
    assert lines["Firestore writes"].usd_per_million == pytest.approx(9.00)
    assert lines["Firestore TTL deletes"].usd_per_million == pytest.approx(0.20)
    assert lines["function requests"].usd_per_million == pytest.approx(0.80)
    # 0.1 s billed for submit, 0.2 s for the worker, each at 1 vCPU.
    assert lines["function CPU"].quantity_per_task == pytest.approx(0.3)
    assert lines["function CPU"].usd_per_million == pytest.approx(7.20)
    assert lines["function memory"].quantity_per_task == pytest.approx(0.1 * 0.5 + 0.2 * 1.0)
    assert lines["Pub/Sub publish + delivery"].usd_per_million == pytest.approx(
        2000 / 1024**4 * 40 * 1e6
    )
    assert cost.total(counted) == pytest.approx(
        sum(line.usd_per_million for line in lines.values())
    )


def test_span_lines_counts_every_exported_span(tmp_path: Path) -> None:
    (tmp_path / "spans-1.jsonl").write_text('{"a": 1}\n{"b": 2}\n')
    (tmp_path / "spans-2.jsonl").write_text('{"c": 3}\n')
    (tmp_path / "other.log").write_text("not a span\n")
    assert harness.span_lines(tmp_path) == 3
    assert harness.span_lines(tmp_path / "missing") == 0


# --- parsing ----------------------------------------------------------------------


def test_stat_cpu_ticks_survives_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", "1", "4242", "4242", "0", "-1", "0", "0", "0", "0", "0", "7", "3", "2", "1"]
    line = "4243 (gunicorn: worker (x)) " + " ".join(fields) + " 20 0 4 0 100"
    assert stat_cpu_ticks(line) == (4242, 7 + 3 + 2 + 1)


@pytest.mark.parametrize(
    ("module", "group"),
    [
        ("  google.cloud.firestore_v1.base_client", "google.cloud.firestore_v1"),
        ("google.protobuf.message", "google.protobuf"),
        ("google", "google"),
        ("    grpc._channel", "grpc"),
        ("shared.tasks.worker", "shared"),
    ],
)
def test_import_group(module: str, group: str) -> None:
    assert import_group(module) == group


def test_parse_importtime_splits_load_and_first_request() -> None:
    text = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:      1500 |       1500 |   grpc._cython",
            "import time:      1999 |       3499 | grpc",
            "import time:      -300 |        100 |     weird.threaded",
            "not an import line",
            FIRST_REQUEST_MARKER,
            "import time:      4000 |       4000 |   google.cloud.firestore_v1.client",
            "import time:       500 |        500 | grpc.aio",
        ]
    )
    phases = parse_importtime(text)
    assert phases["load"] == {"grpc": pytest.approx(3.499), "weird": 0.0}
    assert phases["request"] == {"google.cloud.firestore_v1": 4.0, "grpc": 0.5}
    assert top_imports(phases, 1) == [("google.cloud.firestore_v1", 4.0)]
    assert dict(top_imports(phases)) == {
        "google.cloud.firestore_v1": 4.0,
        "grpc": pytest.approx(3.999),
        "weird": 0.0,
    }


def test_median_profile() -> None:
    def run(ms: float, grpc_ms: float | None) -> dict[str, object]:
        load = {} if grpc_ms is None else {"grpc": grpc_ms}
        return {
            "framework_ms": ms,
            "load_ms": ms,
            "first_request_ms": ms,
            "warm_request_ms": ms,
            "imports": {"load": load, "request": {}},
        }

    merged = median_profile([run(1, 10), run(3, None), run(2, 30)])
    assert merged["load_ms"] == 2
    assert merged["imports"]["load"] == {"grpc": 10}  # absent counts as 0: median of 0, 10, 30


@pytest.mark.parametrize(
    ("total", "size", "blocks"), [(200, 20, [20] * 10), (45, 20, [20, 20, 5]), (0, 20, [])]
)
def test_blocks_split_a_run_into_turns(total: int, size: int, blocks: list[int]) -> None:
    assert _blocks(total, size) == blocks


def test_http_counter_forwards_and_counts() -> None:
    class Upstream(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(202)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    counter = HttpCounter(f"127.0.0.1:{upstream.server_address[1]}").start()
    try:
        host, port = counter.url.removeprefix("http://").split(":")
        for i in range(3):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/projects/p/topics/t", body=f"m{i}".encode())
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (202, f"m{i}".encode())
            conn.close()
        tally = counter.snapshot()
        assert tally.count == 3
        assert tally.statuses == {202: 3}
        assert counter.take_peak() == 1  # one at a time
        assert counter.take_peak() == 0  # reset to what is in flight now
    finally:
        counter.stop()
        upstream.shutdown()
        upstream.server_close()


def test_burst_cpu_is_the_median_over_bursts_per_group_and_of_their_sums() -> None:
    figures = RouteFigures(
        burst_cpu_ms=[
            {"worker": 9.0, "submit": 5.0},
            {"worker": 7.0, "submit": 6.0},
            {"worker": 8.0},  # a group missing from a burst counts as 0 there
        ]
    )
    assert figures.burst_cpu("worker") == 8.0
    assert figures.burst_cpu("submit") == 5.0
    assert figures.burst_cpu() == 13.0  # sums 14, 13, 8
    assert RouteFigures().burst_cpu() == 0.0


# --- the key ring the benchmark gives AIA -------------------------------------------


@pytest.mark.parametrize("scheme", ["hybrid-mlkem768-x25519", "fernet"])
def test_the_benchmark_writes_a_private_key_ring_of_the_scheme_asked_for(
    tmp_path: Path, scheme: str
) -> None:
    from shared.security.keyring import KeyRing

    path = harness.write_keyring(tmp_path / "ring" / "keyring.json", scheme)
    ring = KeyRing.from_json(path.read_text(encoding="utf-8"))
    assert ring.current.scheme == scheme
    assert not ring.encrypt_only
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_benchmark_key_ring_is_post_quantum_unless_told_otherwise(tmp_path: Path) -> None:
    from shared.security.keyring import HYBRID, KeyRing

    path = harness.write_keyring(tmp_path / "keyring.json")
    assert KeyRing.from_json(path.read_text(encoding="utf-8")).current.scheme == HYBRID


def test_the_stack_keeps_the_key_ring_it_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform benchmark picks AIA's scheme by writing the ring before the stack starts."""
    import subprocess

    from devtools.stack import KEYRING_FILE, Options, Stack

    ring = harness.write_keyring(tmp_path / KEYRING_FILE, "fernet")
    before = ring.read_bytes()

    def no_generation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a key ring was generated over the one there: {args}")

    monkeypatch.setattr(subprocess, "run", no_generation)
    stack = Stack(Options(state_dir=tmp_path))
    assert stack.keyring_path == ring
    stack._ensure_keyring()
    assert ring.read_bytes() == before


def test_the_platform_benchmark_takes_the_key_ring_scheme_from_its_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import platform_bench

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(platform_bench, "main", lambda **kwargs: seen.append(kwargs))
    assert platform_bench._cli(["--quick", "--keyring-scheme", "fernet"]) == 0
    assert platform_bench._cli([]) == 0
    assert [s["keyring_scheme"] for s in seen] == ["fernet", "hybrid-mlkem768-x25519"]
    with pytest.raises(SystemExit):
        platform_bench._cli(["--keyring-scheme", "rot13"])
