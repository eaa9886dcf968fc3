"""One trace from a client's `traceparent` to the webhook request, on the running stack.

The stack's functions export spans as JSON lines (`AIA_TRACE_EXPORTER=file`), one
file per process under the stack's `traces/` directory; their logs are files too.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.receiver import ReceiverServer, receiver
from tests.e2e.support import E2E, eventually
from tests.e2e.test_stack_webhooks import Tenant

pytestmark = pytest.mark.e2e


@pytest.fixture
def hook() -> Iterator[ReceiverServer]:
    with receiver() as server:
        yield server


def _spans(directory: Path, trace_id: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(directory.glob("spans-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            span = json.loads(line)
            if span["context"]["trace_id"] == f"0x{trace_id}":
                found.append(span)
    return found


def _consumes(span: dict[str, Any], task_id: str) -> bool:
    """The worker's CONSUMER span of the delivery that ran `task_id`."""
    return bool(
        span["kind"] == "SpanKind.CONSUMER" and span["attributes"].get("aia.task.id") == task_id
    )


def _named(spans: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matching = [s for s in spans if s["kind"] == f"SpanKind.{kind}" and s["name"] == name]
    assert len(matching) == 1, [(s["kind"], s["name"]) for s in spans]
    return matching[0]


def test_a_client_trace_runs_through_submit_worker_logs_and_webhook(
    e2e: E2E, hook: ReceiverServer
) -> None:
    trace_id = secrets.token_hex(16)
    client_span = secrets.token_hex(8)
    tenant = Tenant(e2e)
    tenant.register(hook.url + "/traced")
    tenant.headers["traceparent"] = f"00-{trace_id}-{client_span}-01"
    task_id = tenant.run({"type": "echo", "payload": {"e2e": "tracing"}})

    # The view names the trace; the webhook request continues it.
    assert tenant.call("GET", f"/tasks/{task_id}").json()["trace_id"] == trace_id
    (delivered,) = hook.wait_for("/traced", 1)
    assert delivered.headers["traceparent"].split("-")[1] == trace_id

    # submit_task's SERVER span continues the client's; its PRODUCER span is what the
    # message names; process_task's CONSUMER span is that one's child, the run nests in
    # it, and deliver_webhooks' CLIENT span is the webhook request.
    # Each process exports its spans in batches, on its own schedule: wait for all four.
    # A span is exported once it ends, so a parent comes after its children.
    expected = {"POST submit_task", "send aia-tasks", "run echo", "POST webhook"}
    spans = eventually(
        lambda: _spans(e2e.stack.state_dir / "traces", trace_id),
        lambda found: (
            expected <= {s["name"] for s in found} and any(_consumes(s, task_id) for s in found)
        ),
    )
    server = _named(spans, "SERVER", "POST submit_task")
    assert server["parent_id"] == f"0x{client_span}"
    producer = _named(spans, "PRODUCER", "send aia-tasks")
    assert producer["parent_id"] == server["context"]["span_id"]
    consumer = next(s for s in spans if _consumes(s, task_id))
    assert consumer["parent_id"] == producer["context"]["span_id"]
    assert consumer["name"] == "process aia-tasks"
    assert consumer["attributes"]["messaging.system"] == "gcp_pubsub"
    assert consumer["resource"]["attributes"]["service.name"] == "aia"
    run = _named(spans, "INTERNAL", "run echo")
    assert run["parent_id"] == consumer["context"]["span_id"]
    webhook = _named(spans, "CLIENT", "POST webhook")
    assert delivered.headers["traceparent"].split("-")[2] == webhook["context"]["span_id"][2:]

    # The worker's log lines for this delivery carry the trace and its span.
    lines = [json.loads(line) for line in e2e.worker_log().splitlines() if line.startswith("{")]
    mine = [
        line
        for line in lines
        if line.get("logging.googleapis.com/trace", "").endswith(f"/traces/{trace_id}")
    ]
    assert mine, "no worker log line carries the trace"
    assert {line.get("logging.googleapis.com/spanId") for line in mine} & {
        consumer["context"]["span_id"][2:],
        run["context"]["span_id"][2:],
    }
