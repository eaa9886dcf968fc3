"""Webhooks on the running stack: a receiver in the test, the functions as processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from devtools.receiver import ReceiverServer, receiver
from tests.e2e.support import E2E, eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def hook() -> Iterator[ReceiverServer]:
    with receiver() as server:
        yield server


class Tenant:
    """A fresh tenant, so no other test's endpoint hears its tasks."""

    def __init__(self, e2e: E2E) -> None:
        self.base = e2e.stack.base_url
        self.key = e2e.create_key(f"hooks-{uuid.uuid4().hex[:8]}")
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method, self.base + path, json=body, headers=self.headers, timeout=30
        )

    def register(self, url: str, **more: Any) -> dict[str, Any]:
        body = {"url": url, "events": ["task.succeeded", "task.failed"], **more}
        resp = self.call("POST", "/webhooks", body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def run(self, body: dict[str, Any]) -> str:
        resp = self.call("POST", "/tasks", body)
        assert resp.status_code == 202, resp.text
        task_id = str(resp.json()["task_id"])
        eventually(
            lambda: self.call("GET", f"/tasks/{task_id}").json()["status"],
            lambda s: s in ("succeeded", "failed"),
        )
        return task_id

    def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        resp = self.call("GET", f"/webhooks/{endpoint_id}/deliveries")
        assert resp.status_code == 200, resp.text
        return list(resp.json()["deliveries"])

    def settled(self, endpoint_id: str) -> dict[str, Any]:
        """The endpoint's one delivery, once it is no longer pending."""
        (delivery,) = eventually(
            lambda: self.deliveries(endpoint_id),
            lambda found: len(found) == 1 and found[0]["status"] != "pending",
        )
        return dict(delivery)


def test_one_signed_delivery_whose_body_is_the_task_view(e2e: E2E, hook: ReceiverServer) -> None:
    tenant = Tenant(e2e)
    endpoint = tenant.register(hook.url + "/hook")
    task_id = tenant.run({"type": "echo", "payload": {"e2e": "webhooks"}})
    (got,) = hook.wait_for("/hook", 1)
    view = tenant.call("GET", f"/tasks/{task_id}")
    assert got.body == view.content  # byte for byte what GET answers the tenant
    assert Webhook(endpoint["secret"]).verify(got.body, got.headers)["result"] == {
        "e2e": "webhooks"
    }
    delivery = tenant.settled(endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert delivery["webhook_id"] == got.headers["webhook-id"]
    assert [a["response_code"] for a in delivery["attempts"]] == [200]
    assert len(hook.on("/hook")) == 1  # settled: nothing more is sent


def test_a_500_is_retried_and_the_retry_succeeds(e2e: E2E, hook: ReceiverServer) -> None:
    tenant = Tenant(e2e)
    hook.script("/flaky", 500)
    endpoint = tenant.register(hook.url + "/flaky")
    tenant.run({"type": "echo", "payload": {}})
    first, second = hook.wait_for("/flaky", 2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    Webhook(endpoint["secret"]).verify(second.body, second.headers)
    delivery = tenant.settled(endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert [a["response_code"] for a in delivery["attempts"]] == [500, 200]


def test_a_410_disables_the_endpoint(e2e: E2E, hook: ReceiverServer) -> None:
    tenant = Tenant(e2e)
    hook.script("/gone", 410)
    endpoint = tenant.register(hook.url + "/gone")
    tenant.run({"type": "echo", "payload": {}})
    hook.wait_for("/gone", 1)
    assert tenant.settled(endpoint["id"])["reason"] == "gone"
    shown = tenant.call("GET", f"/webhooks/{endpoint['id']}").json()
    assert (shown["status"], shown["disabled_reason"]) == ("disabled", "gone")


def test_a_failed_delivery_is_replayed_with_the_same_webhook_id(
    e2e: E2E, hook: ReceiverServer
) -> None:
    tenant = Tenant(e2e)
    hook.script("/picky", 400)
    endpoint = tenant.register(hook.url + "/picky", signature="v1")
    tenant.run({"type": "echo", "payload": {}})
    failed = tenant.settled(endpoint["id"])
    assert (failed["status"], failed["reason"]) == ("failed", "http-400")
    replay = tenant.call("POST", f"/webhooks/deliveries/{failed['id']}:replay")
    assert replay.status_code == 202, replay.text
    first, again = hook.wait_for("/picky", 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.body == first.body
    replayed = eventually(
        lambda: tenant.deliveries(endpoint["id"])[0], lambda d: d["status"] == "succeeded"
    )
    assert replayed["replays"] == 1


def test_a_webhook_url_on_one_task(e2e: E2E, hook: ReceiverServer) -> None:
    tenant = Tenant(e2e)
    key = tenant.call("POST", "/webhooks/signing-key", {"signature": "v1"})
    assert key.status_code == 201, key.text
    secret = key.json()["secret"]
    task_id = tenant.run({"type": "echo", "payload": {"n": 1}, "webhook_url": hook.url + "/one"})
    tenant.run({"type": "echo", "payload": {"n": 2}})
    (got,) = hook.wait_for("/one", 1)
    Webhook(secret).verify(got.body, got.headers)
    assert got.body == tenant.call("GET", f"/tasks/{task_id}").content
    delivery = tenant.settled(key.json()["id"])
    assert delivery["task_id"] == task_id
    assert len(hook.on("/one")) == 1


def test_another_tenants_webhook_is_a_404_over_the_gateway(e2e: E2E, hook: ReceiverServer) -> None:
    owner, other = Tenant(e2e), Tenant(e2e)
    endpoint = owner.register(hook.url + "/private")
    assert other.call("GET", f"/webhooks/{endpoint['id']}").status_code == 404
    assert other.call("DELETE", f"/webhooks/{endpoint['id']}").status_code == 404
    assert owner.call("DELETE", f"/webhooks/{endpoint['id']}").status_code == 204


def test_a_finished_workflow_is_one_signed_delivery_of_its_view(
    e2e: E2E, hook: ReceiverServer
) -> None:
    tenant = Tenant(e2e)
    endpoint = tenant.register(hook.url + "/flows", events=["workflow.finished"])
    created = tenant.call(
        "POST",
        "/workflows",
        {
            "nodes": {
                "a": {"type": "echo", "payload": {"n": 1}},
                "b": {"type": "echo", "payload": {"n": 2}, "depends_on": ["a"]},
                "c": {"type": "echo", "payload": {"n": 3}, "depends_on": ["a"]},
            }
        },
    )
    assert created.status_code == 202, created.text
    workflow_id = created.json()["workflow_id"]
    (got,) = hook.wait_for("/flows", 1)
    assert got.headers["aia-event-type"] == "workflow.finished"
    view = tenant.call("GET", f"/workflows/{workflow_id}")
    assert got.body == view.content  # byte for byte what GET answers the tenant
    verified = Webhook(endpoint["secret"]).verify(got.body, got.headers)
    assert verified["workflow_id"] == workflow_id
    assert verified["status"] == "succeeded"
    # Its nodes' own ends are not this endpoint's events: one delivery in all.
    assert tenant.settled(endpoint["id"])["status"] == "succeeded"
    assert len(hook.on("/flows")) == 1
