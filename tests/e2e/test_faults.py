"""The fault suite: the stack as processes, with dependencies frozen and workers killed.

Each test drives a real `make dev` stack over HTTP and breaks it the way
production breaks: a worker SIGKILLed mid-task, an emulator SIGSTOPped (a
dependency that accepts connections and never answers), duplicate deliveries,
a handler that ignores its deadline, a burst, hostile input. Concurrency is
observed directly through the diagnostic `probe` task, which records every
attempt it starts and which other attempts were running at that moment.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.client import AiaClient
from devtools.stack_process import RunningStack, running_stack
from shared.tasks.diagnostic import read_probe, release_probe
from tests.e2e.support import PubSubRest, eventually

pytestmark = pytest.mark.e2e

# The bound the hardening issue sets on any answer while a dependency is frozen.
ANSWER_BOUND_S = 5.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # A sweep every 2 s, so recovery waits for the lease rather than for the sweep.
    with running_stack(
        tmp_path_factory.mktemp("faults"), extra_args=["--redispatch-every", "2"]
    ) as running:
        yield running


@pytest.fixture
def client(stack: RunningStack) -> AiaClient:
    # Each request must be answered within the bound, or requests raises.
    return AiaClient(stack.base_url, stack.api_key, timeout_s=ANSWER_BOUND_S)


def probe_base(stack: RunningStack) -> Path:
    return Path(stack.env["AIA_DIAGNOSTIC_DIR"])


def new_marker() -> str:
    return f"f-{uuid.uuid4().hex[:12]}"


def submit(client: AiaClient, body: dict[str, Any]) -> str:
    resp = client.submit(body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def started(stack: RunningStack, marker: str, attempts: list[int]) -> dict[str, Any]:
    return eventually(
        lambda: read_probe(marker, probe_base(stack)), lambda r: r["attempts"] == attempts
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


def test_a_worker_killed_mid_task_recovers_on_attempt_2_and_new_tasks_run(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = new_marker()
    body = {
        "type": "probe",
        "payload": {"marker": marker, "hold_attempts": 1},
        "timeout_s": 2,
        "max_attempts": 3,
    }
    task_id = submit(client, body)
    first = started(stack, marker, [1])
    handler_pid = first["starts"][0][2]
    stack.kill_function("process_task")
    # The handler process dies with its worker: nothing holds the task's code running.
    eventually(lambda: pid_alive(handler_pid), lambda alive: not alive)
    stack.wait_restarted("process_task", 1)
    # The lease runs out, the sweep republishes, attempt 2 runs and succeeds.
    done = client.wait_for(task_id, timeout_s=90)
    assert (done["status"], done["attempts"]) == ("succeeded", 2), done
    recorded = read_probe(marker, probe_base(stack))
    assert recorded["attempts"] == [1, 2]
    assert recorded["overlaps"] == []
    fresh = submit(client, {"type": "echo", "payload": {"after": "restart"}})
    assert client.wait_for(fresh)["status"] == "succeeded"


def test_frozen_pubsub_defers_the_dispatch_and_the_task_still_runs(
    stack: RunningStack, client: AiaClient
) -> None:
    with stack.frozen("pubsub-emulator"):
        resp = client.submit({"type": "echo", "payload": {"frozen": "pubsub"}})
        assert resp.status_code == 202, resp.text
        assert resp.json()["dispatch"] == "deferred"
    task_id = resp.json()["task_id"]
    assert client.wait_for(task_id, timeout_s=60)["status"] == "succeeded"


def test_frozen_firestore_is_a_503_with_retry_after(stack: RunningStack, client: AiaClient) -> None:
    other_key = stack.cli("keys", "create", "--tenant", "frozen").stdout.strip()
    for key in (stack.api_key, other_key):
        with stack.frozen("firestore-emulator"):
            resp = AiaClient(stack.base_url, key, timeout_s=ANSWER_BOUND_S).submit(
                {"type": "echo", "payload": {}}
            )
        assert resp.status_code == 503, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert int(resp.headers["Retry-After"]) >= 1
    # Thawed, the same request is accepted.
    assert client.submit({"type": "echo", "payload": {}}).status_code == 202


def test_firestore_frozen_for_8_s_mid_task_still_succeeds_once(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = new_marker()
    task_id = submit(client, {"type": "probe", "payload": {"marker": marker, "seconds": 1}})
    started(stack, marker, [1])
    with stack.frozen("firestore-emulator"):
        time.sleep(8)  # the outage itself, not a wait for an outcome
    done = AiaClient(stack.base_url, stack.api_key).wait_for(task_id, timeout_s=90)
    assert done["status"] == "succeeded", done
    assert read_probe(marker, probe_base(stack))["attempts"] == [1]


def test_extra_deliveries_of_a_running_and_a_finished_task_change_nothing(
    stack: RunningStack, client: AiaClient
) -> None:
    pubsub = PubSubRest(stack.env["PUBSUB_EMULATOR_HOST"], stack.env["GOOGLE_CLOUD_PROJECT"])
    marker = new_marker()
    task_id = submit(client, {"type": "probe", "payload": {"marker": marker, "hold_attempts": 1}})
    started(stack, marker, [1])
    message = json.dumps({"task_id": task_id, "tenant_id": "dev"}).encode()
    for _ in range(3):
        pubsub.publish("aia-tasks", message, {"duplicate": "running"})
    # The duplicates are acknowledged as busy while the first attempt holds.
    eventually(
        lambda: (stack.state_dir / "logs" / "process_task.log").read_text(errors="replace"),
        lambda log: log.count('"detail": "busy"') >= 3,
    )
    release_probe(marker, probe_base(stack))
    assert client.wait_for(task_id)["attempts"] == 1
    for _ in range(3):
        pubsub.publish("aia-tasks", message, {"duplicate": "finished"})
    eventually(
        lambda: (stack.state_dir / "logs" / "process_task.log").read_text(errors="replace"),
        lambda log: log.count('"detail": "terminal"') >= 3,
    )
    view = client.task(task_id).json()
    assert (view["status"], view["attempts"]) == ("succeeded", 1)
    assert read_probe(marker, probe_base(stack))["attempts"] == [1]


def test_a_handler_that_overruns_its_timeout_never_overlaps_its_retry(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = new_marker()
    body = {
        "type": "probe",
        "payload": {"marker": marker, "seconds": 60, "honour_cancel": False},
        "timeout_s": 2,
        "max_attempts": 2,
    }
    task_id = submit(client, body)
    done = client.wait_for(task_id, timeout_s=90)
    assert (done["status"], done["attempts"], done["error"]["code"]) == ("failed", 2, "timeout")
    recorded = read_probe(marker, probe_base(stack))
    assert recorded["attempts"] == [1, 2]
    assert recorded["overlaps"] == []
    # Each overrunning attempt was stopped: neither handler process is still running.
    assert not any(pid_alive(pid) for _, _, pid in recorded["starts"])


def test_a_burst_of_1000_tasks_loses_none_and_runs_none_twice(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = new_marker()
    body = {"type": "probe", "payload": {"marker": marker}}
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def sender(count: int) -> None:
        own = AiaClient(stack.base_url, stack.api_key, timeout_s=60)
        for _ in range(count):
            resp = own.submit(body)
            with lock:
                if resp.status_code == 202:
                    ids.append(resp.json()["task_id"])
                else:
                    errors.append(f"{resp.status_code} {resp.text[:200]}")

    threads = [
        threading.Thread(target=sender, args=(1000 // 16 + (i < 1000 % 16),)) for i in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert errors == []
    assert len(ids) == len(set(ids)) == 1000
    reader = AiaClient(stack.base_url, stack.api_key, timeout_s=30)
    for task_id in ids:
        assert reader.wait_for(task_id, timeout_s=300)["status"] == "succeeded"
    starts = Counter(task for task, _, _ in read_probe(marker, probe_base(stack))["starts"])
    assert set(starts) == set(ids)
    assert max(starts.values()) == 1  # no task's handler ran twice


@pytest.mark.parametrize(
    ("body", "limit_named"),
    [
        (b"[" * 5000 + b"]" * 5000, True),
        (json.dumps({"type": "echo", "payload": {"a": [[[[[]]]]]}}).encode(), False),
    ],
)
def test_hostile_bodies_get_a_clear_400_or_are_accepted(
    client: AiaClient, body: bytes, limit_named: bool
) -> None:
    resp = client.submit(raw=body)
    if limit_named:
        assert resp.status_code == 400, resp.text
        problem = resp.json()
        assert (problem["type"], problem["limit"]) == (
            "https://aia.dev/problems/nesting-too-deep",
            64,
        )
    else:
        assert resp.status_code == 202


def test_a_deep_payload_is_refused_and_reads_never_break(client: AiaClient) -> None:
    payload: Any = "leaf"
    for _ in range(300):
        payload = {"a": payload}
    refused = client.submit({"type": "echo", "payload": payload})
    assert refused.status_code == 400, refused.text
    token = base64.urlsafe_b64encode(b"[" * 3000).decode()[:4000]
    for bad in (token, "[" * 4000):
        listed = client.request("GET", "/tasks", params={"page_token": bad})
        assert listed.status_code == 400, listed.text
        assert listed.json()["field"] == "page_token"
    # Everything accepted stays readable: every page of the list answers 200.
    token_seen: str | None = None
    while True:
        params = {"limit": "100", **({"page_token": token_seen} if token_seen else {})}
        page = client.request("GET", "/tasks", params=params)
        assert page.status_code == 200, page.text
        token_seen = page.json().get("next_page_token")
        if token_seen is None:
            break


def test_metrics_are_not_anonymous_when_a_token_is_set(stack: RunningStack) -> None:
    token = stack.env.get("AIA_METRICS_TOKEN")
    if token is None:
        pytest.fail("the local stack must guard /metrics with a token, as production does")
    assert requests.get(f"{stack.base_url}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{stack.base_url}/health", timeout=10).status_code == 401
    assert requests.get(f"{stack.base_url}/health?probe=live", timeout=10).status_code == 200
    authorized = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{stack.base_url}/metrics", headers=authorized, timeout=10).ok
    assert requests.get(f"{stack.base_url}/health", headers=authorized, timeout=10).ok
