"""webhooks and deliver_webhooks through create_app, as deployed (loopback not allowed)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from shared.security.keyring import KeyRing
from tests.conftest import observed_topics
from tests.support.problems import assert_problem
from tests.support.pubsub import pull

from .conftest import PROJECT, function_client

pytestmark = pytest.mark.integration

# A public IP literal passes the egress rules without DNS (this machine has none outside).
PUBLIC_URL = "https://93.184.216.34/hooks/aia"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(
    configure: Callable[..., None], ring: KeyRing, api_key: Callable[[str], str]
) -> dict[str, str]:
    # As Terraform deploys it: the public ring only.
    configure(keyring_json=ring.public_only().to_json())
    observed_topics(PROJECT, ("aia-webhook-events",))
    return {"acme": api_key("acme"), "globex": api_key("globex")}


def register(client: Any, key: str, **body: Any) -> Any:
    return client.post(
        "/webhooks",
        json={"url": PUBLIC_URL, "events": ["task.succeeded"], **body},
        headers=auth(key),
    )


def test_register_list_rotate_deliveries_delete(api: dict[str, str]) -> None:
    client = function_client("webhooks")
    created = register(client, api["acme"], events=["task.succeeded", "task.failed"])
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    assert body["secret"].startswith("whsec_")
    assert body["url"] == PUBLIC_URL
    assert body["events"] == ["task.succeeded", "task.failed"]
    assert body["status"] == "active"
    assert created.headers["Location"] == f"https://aia.example/webhooks/{body['id']}"
    assert created.headers["Cache-Control"] == "no-store"
    listed = client.get("/webhooks", headers=auth(api["acme"])).get_json()
    assert [w["id"] for w in listed["webhooks"]] == [body["id"]]
    assert "secret" not in json.dumps(listed)
    one = client.get(f"/webhooks/{body['id']}", headers=auth(api["acme"]))
    assert one.status_code == 200
    assert one.get_json()["signing_keys"] == body["signing_keys"]
    rotated = client.post(f"/webhooks/{body['id']}:rotate-secret", headers=auth(api["acme"]))
    assert rotated.status_code == 200
    assert rotated.get_json()["secret"] != body["secret"]
    assert len(rotated.get_json()["signing_keys"]) == 2
    deliveries = client.get(f"/webhooks/{body['id']}/deliveries", headers=auth(api["acme"]))
    assert deliveries.get_json() == {"deliveries": []}
    assert client.delete(f"/webhooks/{body['id']}", headers=auth(api["acme"])).status_code == 204
    assert_problem(client.get(f"/webhooks/{body['id']}", headers=auth(api["acme"])), 404)


def test_v1a_shows_the_public_key_and_never_a_secret(api: dict[str, str]) -> None:
    body = register(function_client("webhooks"), api["acme"], signature="v1a").get_json()
    assert "secret" not in body
    assert body["public_key"].startswith("whpk_")
    assert len(base64.b64decode(body["public_key"].removeprefix("whpk_"))) == 32


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:9/x", "https-required"),
        ("https://127.0.0.1/x", "loopback-address"),
        ("https://10.0.0.8/x", "private-address"),
        ("https://169.254.169.254/x", "link-local-address"),
        ("https://u:p@93.184.216.34/x", "credentials-in-url"),
    ],
)
def test_a_refused_url_is_a_422_naming_the_field_and_the_rule(
    api: dict[str, str], url: str, rule: str
) -> None:
    problem = assert_problem(
        register(function_client("webhooks"), api["acme"], url=url), 422, field="url"
    )
    assert problem["rule"] == rule
    assert rule in problem["detail"]


def test_loopback_is_allowed_only_through_the_local_flag(
    api: dict[str, str], configure: Callable[..., None], ring: KeyRing
) -> None:
    configure(keyring_json=ring.public_only().to_json(), AIA_WEBHOOKS_ALLOW_LOOPBACK="true")
    answer = register(function_client("webhooks"), api["acme"], url="http://127.0.0.1:9/x")
    assert answer.status_code == 201


def test_another_tenants_webhook_is_a_404(api: dict[str, str]) -> None:
    client = function_client("webhooks")
    endpoint = register(client, api["acme"]).get_json()["id"]
    for method, path in (
        ("GET", f"/webhooks/{endpoint}"),
        ("DELETE", f"/webhooks/{endpoint}"),
        ("POST", f"/webhooks/{endpoint}:rotate-secret"),
        ("GET", f"/webhooks/{endpoint}/deliveries"),
        ("POST", f"/webhooks/deliveries/dl_{'0' * 32}:replay"),
    ):
        assert_problem(client.open(path, method=method, headers=auth(api["globex"])), 404)
    assert client.get("/webhooks", headers=auth(api["globex"])).get_json() == {"webhooks": []}


def test_routes_methods_and_auth(api: dict[str, str]) -> None:
    client = function_client("webhooks")
    assert_problem(client.get("/webhooks/a/b/c", headers=auth(api["acme"])), 404)
    refused = client.put("/webhooks", headers=auth(api["acme"]))
    assert_problem(refused, 405)
    assert refused.headers["Allow"] == "GET, POST, HEAD"
    assert_problem(client.get("/webhooks"), 401)
    assert_problem(client.get("/webhooks", headers=auth("aia_nope")), 401)
    assert_problem(client.get("/webhooks?limit=0", headers=auth(api["acme"])), 422, field="limit")
    assert_problem(
        client.get("/webhooks?page_token=garbage", headers=auth(api["acme"])), 400, "page_token"
    )


def test_submit_checks_a_webhook_url(api: dict[str, str]) -> None:
    submit = function_client("submit_task")
    task = {"type": "echo", "payload": {}, "webhook_url": PUBLIC_URL}
    missing = assert_problem(
        submit.post("/tasks", json=task, headers=auth(api["acme"])), 422, field="webhook_url"
    )
    assert missing["rule"] == "no-signing-key"
    key = function_client("webhooks").post(
        "/webhooks/signing-key", json={}, headers=auth(api["acme"])
    )
    assert key.status_code == 201, key.get_data(as_text=True)
    assert key.get_json()["kind"] == "task"
    assert submit.post("/tasks", json=task, headers=auth(api["acme"])).status_code == 202
    loopback = {**task, "webhook_url": "https://127.0.0.1/x"}
    refused = assert_problem(
        submit.post("/tasks", json=loopback, headers=auth(api["acme"])), 422, field="webhook_url"
    )
    assert refused["rule"] == "loopback-address"


def push(data: dict[str, Any] | bytes) -> dict[str, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {
        "subscription": f"projects/{PROJECT}/subscriptions/aia-webhook-events-deliver",
        "message": {"data": base64.b64encode(raw).decode(), "messageId": "1", "attributes": {}},
    }


def test_deliver_webhooks_acks_pushes_and_sweeps(
    configure: Callable[..., None], ring: KeyRing
) -> None:
    configure(keyring_json=ring.to_json())
    ((_, observer),) = observed_topics(PROJECT, ("aia-webhook-events",)).values()
    client = function_client("deliver_webhooks")
    swept = client.post("/sweep")
    assert swept.status_code == 200
    assert swept.get_json() == {"events": 0, "deliveries": 0, "caught_up": 0}
    # An unknown event and a message that is no webhook message are both acknowledged.
    unknown = {"tenant_id": "acme", "event_id": "evt_" + "0" * 32}
    assert client.post("/push", json=push(unknown)).status_code == 204
    assert client.post("/push", json=push(b"not json")).status_code == 204
    assert pull(observer) == []
    refused = client.get("/push")
    assert_problem(refused, 405)
    assert_problem(client.post("/elsewhere"), 404)
