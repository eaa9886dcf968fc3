"""workflows through create_app: answers, problem answers naming the node, tenant isolation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.problems import assert_problem

from .conftest import function_client

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def echo(*deps: str) -> dict[str, Any]:
    return {"type": "echo", "payload": {}, "depends_on": list(deps)}


CHAIN = {"nodes": {"a": echo(), "b": echo("a")}}


def test_create_read_list_and_cancel(api_key: Callable[[str], str]) -> None:
    client = function_client("workflows")
    key = auth(api_key("acme"))
    created = client.post("/workflows", json=CHAIN, headers=key)
    assert created.status_code == 202, created.get_data(as_text=True)
    body = created.get_json()
    workflow_id = body["workflow_id"]
    assert created.headers["Location"] == f"https://aia.example/workflows/{workflow_id}"
    assert body == {
        "workflow_id": workflow_id,
        "status": "running",
        "status_url": body["status_url"],
    }
    view = client.get(f"/workflows/{workflow_id}", headers=key).get_json()
    assert (view["status"], view["failure_policy"]) == ("running", "fail_fast")
    assert {n: v["status"] for n, v in view["nodes"].items()} == {"a": "queued", "b": "waiting"}
    assert view["nodes"]["b"]["depends_on"] == ["a"]
    listed = client.get("/workflows", headers=key).get_json()
    assert [w["workflow_id"] for w in listed["workflows"]] == [workflow_id]
    cancelled = client.post(f"/workflows/{workflow_id}:cancel", headers=key)
    assert cancelled.status_code == 202
    assert cancelled.get_json()["status"] == "cancelled"
    again = client.post(f"/workflows/{workflow_id}:cancel", headers=key)
    assert (again.status_code, again.get_json()) == (202, cancelled.get_json())


def test_a_replayed_create_answers_the_same_workflow(api_key: Callable[[str], str]) -> None:
    client = function_client("workflows")
    key = {**auth(api_key("acme")), "Idempotency-Key": "wf-contract"}
    first = client.post("/workflows", json=CHAIN, headers=key)
    again = client.post("/workflows", json=CHAIN, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["workflow_id"] == first.get_json()["workflow_id"]
    other = {**CHAIN, "failure_policy": "continue"}
    assert_problem(client.post("/workflows", json=other, headers=key), 422, "Idempotency-Key")


def test_another_tenants_workflow_is_a_404(api_key: Callable[[str], str]) -> None:
    client = function_client("workflows")
    theirs = client.post("/workflows", json=CHAIN, headers=auth(api_key("globex")))
    workflow_id = theirs.get_json()["workflow_id"]
    mine = auth(api_key("acme"))
    assert_problem(client.get(f"/workflows/{workflow_id}", headers=mine), 404)
    assert_problem(client.post(f"/workflows/{workflow_id}:cancel", headers=mine), 404)
    assert client.get("/workflows", headers=mine).get_json() == {"workflows": []}


@pytest.mark.parametrize(
    ("nodes", "field"),
    [
        ({"a": echo(), "b": {"type": "nope", "payload": {}}}, "nodes.b.type"),
        ({"nap": {"type": "sleep", "payload": {"seconds": 99}}}, "nodes.nap.payload.seconds"),
        ({"a": echo(), "b": echo("a", "ghost")}, "nodes.b.depends_on"),
        ({"a": echo("c"), "b": echo("a"), "c": echo("b")}, "nodes.a.depends_on"),
        ({"a": {**echo(), "run_at": "2030-01-01T00:00:00Z"}}, "nodes.a.run_at"),
        ({"a": {**echo(), "max_attempts": 0}}, "nodes.a.max_attempts"),
        ({"Bad Name": echo()}, "nodes.Bad Name"),
        ({}, "nodes"),
    ],
)
def test_an_invalid_workflow_is_a_422_naming_the_node(
    api_key: Callable[[str], str], nodes: dict[str, Any], field: str
) -> None:
    response = function_client("workflows").post(
        "/workflows", json={"nodes": nodes}, headers=auth(api_key("acme"))
    )
    assert_problem(response, 422, field)


def test_nothing_is_stored_for_an_invalid_workflow(api_key: Callable[[str], str]) -> None:
    client = function_client("workflows")
    key = auth(api_key("acme"))
    bad = {"nodes": {"a": echo(), "b": echo("b")}}  # b waits for itself
    problem = assert_problem(client.post("/workflows", json=bad, headers=key), 422)
    assert problem["cycle"] == ["b"]
    assert client.get("/workflows", headers=key).get_json() == {"workflows": []}


def test_workflows_routes_methods_and_auth(api_key: Callable[[str], str]) -> None:
    client = function_client("workflows")
    assert_problem(client.get("/workflows"), 401)
    assert_problem(client.post("/workflows", json=CHAIN), 401)
    key = auth(api_key("acme"))
    assert_problem(
        client.post(
            "/workflows", data=b"{not json", headers={**key, "Content-Type": "application/json"}
        ),
        400,
    )
    assert_problem(client.get("/workflows?limit=0", headers=key), 422, "limit")
    assert_problem(client.get("/workflows?page_token=nope", headers=key), 400)
    assert_problem(client.get(f"/workflows/{'a' * 32}", headers=key), 404)
    assert_problem(client.get("/workflows/not-an-id", headers=key), 404)
    wrong = client.put("/workflows", headers=key)
    assert_problem(wrong, 405)
    assert wrong.headers["Allow"] == "GET, POST, HEAD"
    cancel = client.get(f"/workflows/{'a' * 32}:cancel", headers=key)
    assert_problem(cancel, 405)
    assert cancel.headers["Allow"] == "POST"
