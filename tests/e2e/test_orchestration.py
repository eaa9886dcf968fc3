"""Fan-out, dependencies and cancellation on the running stack, with its faults."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.client import AiaClient
from devtools.stack_process import RunningStack, running_stack
from shared.tasks.diagnostic import read_probe, release_probe
from tests.e2e.support import PubSubRest, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory.mktemp("orchestration"), extra_args=["--redispatch-every", "2"]
    ) as running:
        yield running


@pytest.fixture
def client(stack: RunningStack) -> AiaClient:
    return AiaClient(stack.base_url, stack.api_key)


def submit(client: AiaClient, body: dict[str, Any]) -> str:
    resp = client.submit(body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


def test_a_fan_out_of_300_children_fans_in_once(client: AiaClient) -> None:
    parent = submit(client, {"type": "fan", "payload": {"children": 300}})
    done = client.wait_for(parent, timeout_s=300)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"children": 300, "succeeded": 300, "total": sum(range(300))}
    assert done["children"] == {"succeeded": 300}
    continuation = client.task(done["continuation_id"]).json()
    assert (continuation["status"], continuation["attempts"]) == ("succeeded", 1)


def test_duplicate_deliveries_of_children_never_fire_the_continuation_twice(
    stack: RunningStack, client: AiaClient
) -> None:
    pubsub = PubSubRest(stack.env["PUBSUB_EMULATOR_HOST"], stack.env["GOOGLE_CLOUD_PROJECT"])
    parent = submit(client, {"type": "fan", "payload": {"children": 5}})
    done = client.wait_for(parent, timeout_s=120)
    listed = client.tasks(limit=100).json()["tasks"]
    children = [t for t in listed if t.get("parent_id") == parent and t["type"] == "echo"]
    assert len(children) == 5
    sent = [
        pubsub.publish(
            "aia-tasks",
            json.dumps({"task_id": child["task_id"], "tenant_id": "dev"}).encode(),
            {"duplicate": "true"},
        )
        for child in children
    ]
    log = stack.state_dir / "logs" / "process_task.log"
    # Every duplicate was handled (acknowledged as finished) before anything is checked.
    eventually(
        lambda: log.read_text(errors="replace"),
        lambda text: all(f'"message_id": "{m}"' in text for m in sent),
    )
    assert all(client.task(c["task_id"]).json()["attempts"] == 1 for c in children)
    assert client.task(done["continuation_id"]).json()["attempts"] == 1
    assert client.task(parent).json()["status"] == "succeeded"


def test_cancelling_a_waiting_parent_cancels_its_children_within_seconds(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = f"o-{uuid.uuid4().hex[:10]}"
    base = Path(stack.env["AIA_DIAGNOSTIC_DIR"])
    # Two: the emulator pushes about two deliveries at a time, and these hold theirs.
    parent = submit(client, {"type": "fan", "payload": {"children": 2, "hold_marker": marker}})
    eventually(lambda: len(read_probe(marker, base)["attempts"]), lambda n: n == 2, timeout_s=60)
    cancelled = client.request("POST", f"/tasks/{parent}:cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    view = client.wait_for(parent, timeout_s=30)
    assert view["status"] == "cancelled"
    # The running children see ctx.cancelled (a probe honours it) and end cancelled.
    eventually(
        lambda: client.task(parent).json().get("children", {}),
        lambda counts: counts == {"cancelled": 2},
        timeout_s=60,
    )
    release_probe(marker, base)
    continuation = client.task(view["continuation_id"]).json()
    assert continuation["status"] == "cancelled"


def test_a_worker_killed_mid_fan_out_still_fans_in_once(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = f"k-{uuid.uuid4().hex[:10]}"
    base = Path(stack.env["AIA_DIAGNOSTIC_DIR"])
    parent = submit(
        client,
        {"type": "fan", "payload": {"children": 4, "hold_marker": marker}, "timeout_s": 5},
    )
    eventually(lambda: len(read_probe(marker, base)["attempts"]), lambda n: n >= 1, timeout_s=60)
    stack.kill_function("process_task")  # children hold their leases as it dies
    stack.wait_restarted("process_task", stack.restarts("process_task"))
    release_probe(marker, base)  # their retries (attempt 2) do not hold
    done = client.wait_for(parent, timeout_s=180)
    assert done["status"] == "succeeded", done
    assert done["result"]["children"] == 4
    assert client.task(done["continuation_id"]).json()["attempts"] == 1


def test_dependencies_over_http(client: AiaClient) -> None:
    first = submit(client, {"type": "echo", "payload": {"i": 1}})
    merged = client.submit(
        {"type": "analytics.merge", "payload": {}, "depends_on": [first]}
    )  # an echo result is no partial: the merge fails, but only after its dependency ran
    assert merged.status_code == 202, merged.text
    assert merged.json()["status"] == "waiting"
    view = client.wait_for(merged.json()["task_id"], timeout_s=60)
    assert client.task(first).json()["status"] == "succeeded"
    assert view["status"] == "failed"
    missing = client.submit({"type": "echo", "payload": {}, "depends_on": ["0" * 32]})
    assert missing.status_code == 422
    assert missing.json()["field"] == "depends_on.0"


def test_a_concurrency_key_runs_its_tasks_one_at_a_time_and_the_rest_wait(
    stack: RunningStack, client: AiaClient
) -> None:
    marker = f"k-{uuid.uuid4().hex[:10]}"
    base = Path(stack.env["AIA_DIAGNOSTIC_DIR"])
    key = f"user-{uuid.uuid4().hex[:8]}"
    body = {
        "type": "probe",
        "payload": {"marker": marker, "seconds": 0.5},
        "concurrency_key": key,
    }
    ids = [submit(client, body) for _ in range(6)]
    # Accepted, and waiting: queued, saying for what.
    eventually(
        lambda: [client.task(t).json() for t in ids],
        lambda views: any(
            v["status"] == "queued" and v.get("blocked_by") == f"concurrency:{key}" for v in views
        ),
        timeout_s=30,
    )
    for task_id in ids:
        assert client.wait_for(task_id, timeout_s=120)["status"] == "succeeded"
    probe = read_probe(marker, base)
    assert len(probe["attempts"]) == 6
    assert probe["max_concurrency"] == 1
