"""Workflows on the running stack: submitted over HTTP, run by process_task, read back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devtools.client import AiaClient
from devtools.stack_process import RunningStack, running_stack
from tests.e2e.support import eventually

pytestmark = pytest.mark.e2e

# Generous: two shared cores, and other engineers' runs beside this one.
TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory.mktemp("workflows"), extra_args=["--redispatch-every", "2"]
    ) as running:
        yield running


@pytest.fixture
def client(stack: RunningStack) -> AiaClient:
    return AiaClient(stack.base_url, stack.api_key)


def inputs(name: str, *deps: str) -> dict[str, Any]:
    return {"type": "inputs", "payload": {"name": name}, "depends_on": list(deps)}


def create(client: AiaClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.request("POST", "/workflows", json=body)
    assert resp.status_code == 202, resp.text
    answer: dict[str, Any] = resp.json()
    assert resp.headers["Location"] == answer["status_url"]
    return answer


def finished(client: AiaClient, workflow_id: str) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        resp = client.request("GET", f"/workflows/{workflow_id}")
        assert resp.status_code == 200, resp.text
        view: dict[str, Any] = resp.json()
        return view

    return eventually(read, lambda v: v["status"] != "running", timeout_s=TIMEOUT_S)


def test_a_diamond_workflow_runs_end_to_end(client: AiaClient) -> None:
    body = {
        "nodes": {
            "a": inputs("a"),
            "b": inputs("b", "a"),
            "c": inputs("c", "a"),
            "d": inputs("d", "b", "c"),
        }
    }
    answer = create(client, body)
    view = finished(client, answer["workflow_id"])
    assert view["status"] == "succeeded", view
    assert view["counts"] == {"succeeded": 4}
    nodes = view["nodes"]
    assert all(n["attempts"] == 1 and n["finished_at"] for n in nodes.values())
    assert nodes["d"]["depends_on"] == ["b", "c"]
    sink = client.task(nodes["d"]["task_id"]).json()
    a = {"name": "a", "inputs": {}}
    assert sink["result"] == {
        "name": "d",
        "inputs": {"b": {"name": "b", "inputs": {"a": a}}, "c": {"name": "c", "inputs": {"a": a}}},
    }
    assert sink["workflow_id"] == answer["workflow_id"]
    listed = client.request("GET", "/workflows", params={"limit": 100}).json()["workflows"]
    assert answer["workflow_id"] in [w["workflow_id"] for w in listed]


def test_fail_fast_on_the_stack_cancels_what_had_not_started(client: AiaClient) -> None:
    body = {
        "nodes": {
            "bad": {"type": "fail", "payload": {"times": 5, "retryable": False}},
            "then": inputs("then", "bad"),
            "after-then": inputs("after-then", "then"),
        },
        "failure_policy": "fail_fast",
    }
    view = finished(client, create(client, body)["workflow_id"])
    assert view["status"] == "failed", view
    assert {n: v["status"] for n, v in view["nodes"].items()} == {
        "bad": "failed",
        "then": "cancelled",
        "after-then": "cancelled",
    }
    # Finished: a cancel is refused, as for a finished task.
    again = client.request("POST", f"/workflows/{view['workflow_id']}:cancel")
    assert again.status_code == 409, again.text
    assert again.headers["Content-Type"].startswith("application/problem+json")


def test_an_invalid_workflow_is_a_problem_naming_the_node(client: AiaClient) -> None:
    body = {"nodes": {"a": inputs("a", "c"), "b": inputs("b", "a"), "c": inputs("c", "b")}}
    resp = client.request("POST", "/workflows", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    problem = resp.json()
    assert (problem["field"], problem["cycle"]) == ("nodes.a.depends_on", ["a", "c", "b"])
