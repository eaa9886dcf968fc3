"""One trace across the hops: HTTP in, Pub/Sub out and in again, stored and resumed, logged."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import flask
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import events, http, logs, tracing
from shared.clients import Deadline
from shared.tasks.dispatch import PubSubTaskPublisher
from shared.tasks.models import Task, TaskMessage, TaskStatus, TaskView

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE}-00f067aa0ba902b7-01"
TASK_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)


class FakePubSub:
    """A publisher client that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def publish(
        self, topic: str, data: bytes, attributes: dict[str, str], *, deadline: Deadline
    ) -> str:
        self.sent.append((topic, data, dict(attributes)))
        return f"m{len(self.sent)}"


def _one(spans: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    (found,) = [s for s in spans.get_finished_spans() if s.kind is kind]
    return found


def _hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def test_traceparents_are_parsed_strictly() -> None:
    assert tracing.parse(INCOMING) == (TRACE, "00f067aa0ba902b7")
    assert tracing.trace_id_of(INCOMING) == TRACE
    for bad in (None, "", "garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01", INCOMING.upper()):
        assert tracing.parse(bad) is None


def test_a_request_publish_and_delivery_share_one_trace(spans: InMemorySpanExporter) -> None:
    app = flask.Flask(__name__)
    client = FakePubSub()
    publisher = PubSubTaskPublisher(client, "projects/p/topics/aia-tasks", "dlq")

    @http.endpoint
    def submit(request: flask.Request) -> flask.Response:
        publisher.publish(TaskMessage(task_id=TASK_ID, tenant_id="acme"))
        return http.json_response({"ok": True}, 202)

    with app.test_request_context("/tasks", method="POST", headers={"traceparent": INCOMING}):
        response = submit(flask.request)
    assert response.status_code == 202

    server = _one(spans, SpanKind.SERVER)
    producer = _one(spans, SpanKind.PRODUCER)
    assert server.context is not None
    assert producer.context is not None
    assert f"{server.context.trace_id:032x}" == TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 202
    assert producer.parent is not None
    assert producer.parent.span_id == server.context.span_id
    assert producer.attributes is not None
    assert producer.attributes["messaging.destination.name"] == "aia-tasks"
    assert producer.attributes["messaging.message.id"] == "m1"

    # The message names the producer span, under both attribute names.
    (_, data, attributes) = client.sent[0]
    expected = f"00-{TRACE}-{_hex_span(producer)}-01"
    assert attributes["traceparent"] == attributes["googclient_traceparent"] == expected

    # The push delivery continues it in a CONSUMER span; log lines carry its ids.
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logs.CloudLoggingFormatter("proj"))
    worker_log = logging.getLogger("aia.test.worker")
    worker_log.addHandler(handler)
    envelope = {
        "subscription": "projects/p/subscriptions/aia-tasks-push",
        "deliveryAttempt": 2,
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": "m1",
        },
    }

    def process(message: TaskMessage) -> Any:
        worker_log.warning("running %s", message.task_id)
        return SimpleNamespace(outcome="succeeded", detail="")

    try:
        events.handle(envelope, process)
    finally:
        worker_log.removeHandler(handler)
    consumer = _one(spans, SpanKind.CONSUMER)
    assert consumer.context is not None
    assert f"{consumer.context.trace_id:032x}" == TRACE
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.name == "process aia-tasks-push"
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.system"] == "gcp_pubsub"
    assert consumer.attributes["messaging.message.id"] == "m1"
    assert consumer.attributes["messaging.gcp_pubsub.message.delivery_attempt"] == 2
    assert consumer.attributes["aia.task.id"] == TASK_ID
    line = json.loads(lines.getvalue().splitlines()[0])
    assert line["logging.googleapis.com/trace"] == f"projects/proj/traces/{TRACE}"
    assert line["logging.googleapis.com/spanId"] == _hex_span(consumer)


def test_a_sweep_republishes_a_task_in_the_trace_it_was_submitted_in(
    spans: InMemorySpanExporter,
) -> None:
    client = FakePubSub()
    publisher = PubSubTaskPublisher(client, "projects/p/topics/aia-tasks", "dlq")
    with tracing.span("sweep", kind="SERVER") as sweep:
        publisher.publish(TaskMessage(task_id=TASK_ID, tenant_id="acme"), traceparent=INCOMING)
    producer = _one(spans, SpanKind.PRODUCER)
    assert producer.context is not None
    assert f"{producer.context.trace_id:032x}" == TRACE  # the task's trace, not the sweep's
    assert [link.context.span_id for link in producer.links] == [sweep.get_span_context().span_id]
    assert tracing.trace_id_of(client.sent[0][2]["traceparent"]) == TRACE


def test_a_failing_request_marks_its_span_without_quoting_the_error(
    spans: InMemorySpanExporter,
) -> None:
    app = flask.Flask(__name__)

    @http.endpoint
    def broken(request: flask.Request) -> flask.Response:
        raise RuntimeError("secret payload text")

    with app.test_request_context("/tasks", method="POST"):
        assert broken(flask.request).status_code == 500
    server = _one(spans, SpanKind.SERVER)
    assert not server.status.is_ok
    assert "secret" not in json.dumps(server.to_json())


def test_the_task_view_shows_the_trace_it_was_submitted_in() -> None:
    now = datetime.now(UTC)
    task = Task(
        task_id=TASK_ID,
        tenant_id="acme",
        type="echo",
        status=TaskStatus.QUEUED,
        max_attempts=3,
        timeout_s=30,
        created_at=now,
        updated_at=now,
        traceparent=INCOMING,
    )
    assert TaskView.of(task).to_json()["trace_id"] == TRACE
    untraced = task.model_copy(update={"traceparent": None})
    assert "trace_id" not in TaskView.of(untraced).to_json()


def test_without_an_sdk_the_request_trace_still_passes_through() -> None:
    # AIA_TRACE_EXPORTER=none: the API alone records nothing but propagates.
    from opentelemetry import trace

    tracing.install(None)
    tracing._tracer = trace.NoOpTracer()
    try:
        with tracing.span("POST submit", traceparent=INCOMING):
            assert tracing.trace_id_of(tracing.current_traceparent()) == TRACE
            attributes: dict[str, str] = {}
            tracing.inject(attributes)
            assert attributes["traceparent"] == INCOMING
    finally:
        tracing.install(None)


def test_the_cloud_trace_exporter_is_made_by_the_first_export_not_the_first_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry.sdk.trace.export import SpanExportResult

    made: list[InMemorySpanExporter] = []

    def build() -> InMemorySpanExporter:
        made.append(InMemorySpanExporter())
        return made[-1]

    exporter = tracing._BuiltOnFirstExport(build)
    assert made == []
    span: Any = SimpleNamespace(name="x")
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert exporter.export([span]) is SpanExportResult.SUCCESS
    assert len(made) == 1
    assert made[0].get_finished_spans() == (span, span)

    def unavailable() -> InMemorySpanExporter:
        made.append(InMemorySpanExporter())
        raise RuntimeError("no credentials")

    broken = tracing._BuiltOnFirstExport(unavailable)
    with caplog.at_level(logging.ERROR, logger="aia.tracing"):
        assert broken.export([span]) is SpanExportResult.FAILURE
        assert broken.export([span]) is SpanExportResult.FAILURE
        assert broken.force_flush() is True
    # Tried once, said once: a dead exporter costs neither the instance nor its logs.
    assert len(made) == 2
    assert [r.message for r in caplog.records].count(
        "trace exporter unavailable; spans are not recorded"
    ) == 1
    broken.shutdown()
