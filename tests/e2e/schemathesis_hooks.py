"""Hooks schemathesis loads (SCHEMATHESIS_HOOKS) for tests/e2e/test_schemathesis.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

KEY = "Idempotency-Key"
# Within the 365 days a run_at may be ahead of now (shared.tasks.models.MAX_DELAY_S).
LATEST_START = timedelta(days=364)
# What createSchedule's valid cases carry where the API checks by meaning (below).
VALID_SCHEDULE = {"cron": "0 0 1 1 *", "timezone": "Europe/Paris"}
VALID_TASK = {"type": "echo", "payload": {}}
# A receiver the local stack's egress allows (loopback, by its configuration); nothing
# listens there, so its deliveries fail fast and retry on schedule.
VALID_WEBHOOK_URL = "http://127.0.0.1:9/schemathesis"
# What createWorkflow's valid cases get for nodes: a small DAG of echo nodes.
VALID_NODES = {
    "a": {"type": "echo", "payload": {}},
    "b": {"type": "echo", "payload": {}, "depends_on": ["a"]},
    "c": {"type": "echo", "payload": {}, "depends_on": ["a", "b"]},
}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    # An Idempotency-Key promises one request body: the fuzzer sends its few keys with
    # many bodies, which the API rightly refuses (422 idempotency-mismatch). A valid case
    # gets a key of its own; the keys of invalid cases stay as generated.
    if case.headers and KEY in case.headers:
        case.headers[KEY] = uuid.uuid4().hex
    body = case.body
    if not isinstance(body, dict):
        return
    if case.method.upper() == "POST" and case.path in ("/tasks", "/tasks/submit"):
        _start_within_a_year(body)
        _no_unknown_dependencies(body)
        # A per-task webhook_url needs the tenant's signing key (the declared 422 without).
        body.pop("webhook_url", None)
        # The schema says a max_running needs a concurrency_key (if/then), which the
        # generator may not honour.
        if body.get("concurrency_key") is None:
            body.pop("max_running", None)
    elif case.method.upper() == "POST" and case.path == "/schedules":
        _meaningful_schedule(body)
    elif case.method.upper() == "POST" and case.path == "/workflows":
        # Whether nodes form a DAG (every dependency a node, no cycle) is checked by
        # meaning, which the schema cannot say: generated names almost never do. A valid
        # case gets a small DAG; its failure policy stays as generated.
        body["nodes"] = VALID_NODES
    elif case.method.upper() == "POST" and case.path == "/webhooks":
        # Whether a URL may receive webhooks depends on what it resolves to (the declared
        # 422 for a private or unresolvable host): a valid case gets one that may.
        body["url"] = VALID_WEBHOOK_URL


def _start_within_a_year(body: dict[str, Any]) -> None:
    # run_at is bounded relative to now, which a schema cannot say: a valid case's
    # date-time past that bound (the fuzzer picks any year) becomes one an hour ahead.
    run_at = body.get("run_at")
    if not isinstance(run_at, str):
        return
    now = datetime.now(UTC)
    try:
        ahead = datetime.fromisoformat(run_at.upper().replace("Z", "+00:00")) - now
    except ValueError:
        return
    if ahead > LATEST_START:
        body["run_at"] = (now + timedelta(hours=1)).isoformat()


def _no_unknown_dependencies(body: dict[str, Any]) -> None:
    # depends_on names tasks by id, and only tasks the tenant stored exist: a generated
    # id is a task nobody submitted (the declared 422), and a dependency cannot be
    # combined with a start time either. A valid case therefore depends on nothing;
    # tests/e2e/test_orchestration.py covers depends_on with real tasks.
    body.pop("depends_on", None)


def _meaningful_schedule(body: dict[str, Any]) -> None:
    # A cron expression, an IANA zone and a registered task type with its payload are
    # checked by meaning: a schema-valid string is almost never one (the declared 422).
    # A valid case gets real ones; its other fields (overlap, catch-up window, the task's
    # attempts and timeout) stay as generated.
    body.update(VALID_SCHEDULE)
    task = body.get("task")
    body["task"] = {**(task if isinstance(task, dict) else {}), **VALID_TASK}
