"""submit_task, task_status, process_task and redispatch through create_app."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import providers
from shared.security.keyring import KeyRing
from shared.tasks.models import TaskStatus
from tests.support.problems import assert_problem
from tests.support.pubsub import Received
from tests.support.pubsub import pull as pubsub_pull

from .conftest import PROJECT, function_client

TASK_STATUSES = [s.value for s in TaskStatus]

pytestmark = pytest.mark.integration


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def push_body(data: dict[str, Any] | bytes) -> dict[str, Any]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return {
        "subscription": f"projects/{PROJECT}/subscriptions/aia-tasks-worker",
        "message": {
            "data": base64.b64encode(raw).decode(),
            "attributes": {},
            "messageId": "1",
            "publishTime": "2026-01-01T00:00:00Z",
        },
    }


def pull(name: str) -> list[Received]:
    return pubsub_pull(f"projects/{PROJECT}/subscriptions/{name}-observer")


def test_submit_accepts_a_valid_task(api_key: Callable[[str], str]) -> None:
    client = function_client("submit_task")
    response = client.post(
        "/tasks/submit", json={"type": "echo", "payload": {"x": 1}}, headers=auth(api_key("acme"))
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"https://aia.example/tasks/{body['task_id']}"
    assert response.headers["Location"] == body["status_url"]
    assert "Idempotent-Replayed" not in response.headers
    assert (
        client.post(
            "/tasks", json={"type": "echo", "payload": {}}, headers=auth(api_key("acme"))
        ).status_code
        == 202
    )


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, None),
        ({"Authorization": "Bearer aia_nope"}, "invalid_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_token"),
    ],
)
def test_submit_requires_a_valid_bearer_key(
    configure: Callable[..., None], headers: dict[str, str], error: str | None
) -> None:
    response = function_client("submit_task").post(
        "/tasks/submit", json={"type": "echo", "payload": {}}, headers=headers
    )
    assert_problem(response, 401)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    assert (error in challenge) if error else ("error=" not in challenge)


def test_revoked_key_is_refused(
    api_key: Callable[[str], str], configure: Callable[..., None]
) -> None:
    configure(AIA_API_KEY_CACHE_S="0")  # the cache's bound is tested on its own
    key = api_key("acme")
    client = function_client("submit_task")
    body = {"type": "echo", "payload": {}}
    assert client.post("/tasks", json=body, headers=auth(key)).status_code == 202
    providers.api_keys().revoke(key.split("_")[1])
    assert_problem(client.post("/tasks", json=body, headers=auth(key)), 401)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, "body"),
        (json.dumps({"type": "nope", "payload": {}}).encode(), 422, "type"),
        (
            json.dumps({"type": "sleep", "payload": {"seconds": 99}}).encode(),
            422,
            "payload.seconds",
        ),
        (json.dumps({"type": "echo"}).encode(), 422, "payload"),
        (
            json.dumps({"type": "echo", "payload": {}, "max_attempts": 11}).encode(),
            422,
            "max_attempts",
        ),
        (json.dumps({"type": "echo", "payload": {}, "extra": 1}).encode(), 422, "extra"),
        (
            json.dumps({"type": "analytics.summary", "payload": {"values": []}}).encode(),
            422,
            "payload.values",
        ),
    ],
)
def test_submit_rejects_bad_input_naming_the_field(
    api_key: Callable[[str], str], body: bytes, status: int, field: str | None
) -> None:
    response = function_client("submit_task").post(
        "/tasks/submit",
        data=body,
        content_type="application/json",
        headers=auth(api_key("acme")),
    )
    assert_problem(response, status, field)


def test_submit_rejects_bodies_over_one_mebibyte(api_key: Callable[[str], str]) -> None:
    big = json.dumps({"type": "echo", "payload": {"blob": "x" * (1024 * 1024)}}).encode()
    response = function_client("submit_task").post(
        "/tasks/submit",
        data=big,
        content_type="application/json",
        headers=auth(api_key("acme")),
    )
    assert_problem(response, 413)


def test_diagnostic_types_can_be_switched_off(configure: Callable[..., None]) -> None:
    configure(AIA_DIAGNOSTIC_TASKS="false")
    key = providers.api_keys().create("acme")[1]
    response = function_client("submit_task").post(
        "/tasks", json={"type": "fail", "payload": {}}, headers=auth(key)
    )
    assert_problem(response, 422, "type")


def test_submit_routes_and_methods(api_key: Callable[[str], str]) -> None:
    client = function_client("submit_task")
    response = client.get("/tasks/submit", headers=auth(api_key("acme")))
    assert_problem(response, 405)
    assert response.headers["Allow"] == "POST"
    assert_problem(client.post("/elsewhere", json={}), 404)


def test_idempotent_replay_and_mismatch(api_key: Callable[[str], str]) -> None:
    client = function_client("submit_task")
    headers = {**auth(api_key("acme")), "Idempotency-Key": "order-42"}
    first = client.post("/tasks", json={"type": "echo", "payload": {"a": 1}}, headers=headers)
    replay = client.post("/tasks", json={"type": "echo", "payload": {"a": 1}}, headers=headers)
    assert first.status_code == replay.status_code == 202
    assert replay.get_json() == first.get_json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    changed = client.post("/tasks", json={"type": "echo", "payload": {"a": 2}}, headers=headers)
    assert_problem(changed, 422, "Idempotency-Key")


def test_submit_works_with_the_public_ring_alone(
    configure: Callable[..., None], ring: KeyRing
) -> None:
    configure(keyring_json=ring.public_only().to_json())
    key = providers.api_keys().create("acme")[1]
    submitted = function_client("submit_task").post(
        "/tasks", json={"type": "echo", "payload": {"secret": 1}}, headers=auth(key)
    )
    assert submitted.status_code == 202
    task_id = submitted.get_json()["task_id"]
    configure()
    worker = function_client("process_task", "cloudevent")
    assert (
        worker.post("/", json=push_body({"task_id": task_id, "tenant_id": "acme"})).status_code
        == 200
    )
    # With the submit function's configuration the result cannot be read back.
    configure(keyring_json=ring.public_only().to_json())
    read = function_client("task_status").get(f"/tasks/{task_id}", headers=auth(key))
    assert_problem(read, 500)
    configure()
    ok = function_client("task_status").get(f"/tasks/{task_id}", headers=auth(key))
    assert ok.get_json()["result"] == {"secret": 1}


def test_status_reads_own_tasks_only(api_key: Callable[[str], str]) -> None:
    acme, globex = api_key("acme"), api_key("globex")
    submitted = (
        function_client("submit_task")
        .post("/tasks", json={"type": "echo", "payload": {}}, headers=auth(acme))
        .get_json()
    )
    status = function_client("task_status")
    mine = status.get(f"/tasks/{submitted['task_id']}", headers=auth(acme))
    assert mine.status_code == 200
    view = mine.get_json()
    assert view["task_id"] == submitted["task_id"]
    assert view["status"] == "queued"
    assert {"type", "attempts", "max_attempts", "created_at", "started_at", "finished_at"} <= set(
        view
    )
    assert "result" not in view
    assert "error" not in view
    assert_problem(status.get(f"/tasks/{submitted['task_id']}", headers=auth(globex)), 404)
    assert_problem(status.get("/tasks/unknown-id", headers=auth(acme)), 404)
    assert status.get("/tasks", headers=auth(globex)).get_json() == {"tasks": []}
    listed = status.get("/tasks?limit=5", headers=auth(acme)).get_json()
    assert [t["task_id"] for t in listed["tasks"]] == [submitted["task_id"]]
    assert "next_page_token" not in listed
    assert_problem(status.get("/tasks?page_token=%%%", headers=auth(acme)), 400, "page_token")
    assert_problem(status.get("/tasks?limit=0", headers=auth(acme)), 422, "limit")
    assert_problem(status.get("/tasks"), 401)
    assert_problem(status.post("/tasks", headers=auth(acme)), 405)


def test_worker_processes_a_push_delivery(api_key: Callable[[str], str]) -> None:
    key = api_key("acme")
    task_id = (
        function_client("submit_task")
        .post(
            "/tasks",
            json={"type": "analytics.summary", "payload": {"values": [1, 2, 3, 4]}},
            headers=auth(key),
        )
        .get_json()["task_id"]
    )
    worker = function_client("process_task", "cloudevent")
    delivery = worker.post(
        f"/projects/{PROJECT}/topics/aia-tasks",
        json=push_body({"task_id": task_id, "tenant_id": "acme"}),
    )
    assert delivery.status_code == 200
    view = function_client("task_status").get(f"/tasks/{task_id}", headers=auth(key)).get_json()
    assert view["status"] == "succeeded"
    assert view["result"]["mean"] == 2.5
    assert view["result"]["p50"] == 2.5


def test_worker_nacks_a_retryable_failure(api_key: Callable[[str], str]) -> None:
    key = api_key("acme")
    task_id = (
        function_client("submit_task")
        .post("/tasks", json={"type": "fail", "payload": {"times": 1}}, headers=auth(key))
        .get_json()["task_id"]
    )
    worker = function_client("process_task", "cloudevent")
    body = push_body({"task_id": task_id, "tenant_id": "acme"})
    assert worker.post("/", json=body).status_code >= 500
    assert worker.post("/", json=body).status_code == 200
    view = function_client("task_status").get(f"/tasks/{task_id}", headers=auth(key)).get_json()
    assert (view["status"], view["attempts"]) == ("succeeded", 2)


def test_worker_acknowledges_a_message_that_is_no_task(
    configure: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    worker = function_client("process_task", "cloudevent")
    assert worker.post("/", json=push_body(b"not json")).status_code == 200
    # Nobody's task: logged, acknowledged, and kept out of the dead-letter topic,
    # which holds exactly the tasks that failed for good.
    assert pull("aia-tasks-dead-letter") == []
    assert any(getattr(r, "code", None) == "malformed-message" for r in caplog.records)


def test_a_deferred_submit_says_so_on_replay_and_the_sweep_dispatches_it(
    api_key: Callable[[str], str], configure: Callable[..., None]
) -> None:
    key = api_key("acme")
    configure(AIA_TASKS_TOPIC="aia-missing-topic")  # publishing fails; storing does not
    client = function_client("submit_task")
    headers = {**auth(key), "Idempotency-Key": "deferred-1"}
    body = {"type": "echo", "payload": {"n": 1}}
    first = client.post("/tasks", json=body, headers=headers)
    assert first.status_code == 202
    assert first.get_json()["dispatch"] == "deferred"
    replay = client.post("/tasks", json=body, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    configure(AIA_TASKS_TOPIC="aia-tasks")
    sweep = function_client("redispatch")
    response = sweep.post("/")
    assert response.status_code == 200
    assert response.get_json() == {"found": 1, "published": 1, "dead_lettered": 0}
    task_id = first.get_json()["task_id"]
    assert [json.loads(m.data)["task_id"] for m in pull("aia-tasks")] == [task_id]
    assert sweep.post("/").get_json() == {"found": 0, "published": 0, "dead_lettered": 0}
    assert_problem(sweep.get("/"), 405)


def test_deep_json_is_a_400_naming_the_limit_never_a_500(api_key: Callable[[str], str]) -> None:
    key = auth(api_key("acme"))
    deep_body = b"[" * 5000 + b"]" * 5000
    response = function_client("submit_task").post(
        "/tasks", data=deep_body, content_type="application/json", headers=key
    )
    body = assert_problem(response, 400)
    assert (body["limit"], body["type"]) == (64, "https://aia.dev/problems/nesting-too-deep")
    payload: Any = {}
    for _ in range(300):
        payload = {"a": payload}
    response = function_client("submit_task").post(
        "/tasks", json={"type": "echo", "payload": payload}, headers=key
    )
    assert assert_problem(response, 400)["limit"] == 64
    token = base64.urlsafe_b64encode(b"[" * 3000).decode()
    for bad in (token[:4000], "[" * 4000):
        listed = function_client("task_status").get(f"/tasks?page_token={bad}", headers=key)
        assert_problem(listed, 400, "page_token")


def test_exhausted_transaction_retries_are_a_503(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def contended(key: str) -> str:
        raise ValueError("Failed to commit transaction in 5 attempts.")

    monkeypatch.setattr(providers.api_keys(), "authenticate", contended)
    response = function_client("task_status").get("/tasks", headers=auth("aia_x"))
    assert_problem(response, 503)
    assert response.headers["Retry-After"] == "1"


def test_an_unreachable_firestore_is_a_503_problem(
    configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.api_core.exceptions import ServiceUnavailable

    def down(key: str) -> str:
        raise ServiceUnavailable("firestore is down")  # type: ignore[no-untyped-call]

    monkeypatch.setattr(providers.api_keys(), "authenticate", down)
    response = function_client("task_status").get("/tasks", headers=auth("aia_x"))
    assert_problem(response, 503)
    assert response.headers["Retry-After"] == "1"


def test_bad_configuration_is_a_problem_not_a_crash(configure: Callable[..., None]) -> None:
    configure(AIA_METRICS_SHARDS="many")
    response = function_client("submit_task").post("/tasks", json={})
    body = assert_problem(response, 500)
    assert "AIA_METRICS_SHARDS" in body["detail"]


def test_malformed_ids_and_forged_cursors_are_404_and_400(api_key: Callable[[str], str]) -> None:
    from shared.tasks.repository import encode_page_token

    status = function_client("task_status")
    key = auth(api_key("acme"))
    for bad in ("__x__", "..", "a" * 200):
        assert_problem(status.get(f"/tasks/{bad}", headers=key), 404)
    forged = encode_page_token(datetime.now(UTC), "a/b")
    assert_problem(status.get(f"/tasks?page_token={forged}", headers=key), 400, "page_token")


def test_a_body_too_large_to_store_is_413_not_a_retry(api_key: Callable[[str], str]) -> None:
    body = json.dumps({"type": "echo", "payload": {"b": "x" * (1024 * 1024 - 200)}}).encode()
    assert len(body) <= 1024 * 1024
    response = function_client("submit_task").post(
        "/tasks", data=body, content_type="application/json", headers=auth(api_key("acme"))
    )
    assert_problem(response, 413, "payload")
    assert "Retry-After" not in response.headers


def test_a_failed_task_is_replayed_once_as_fresh_attempts(api_key: Callable[[str], str]) -> None:
    acme, globex = api_key("acme"), api_key("globex")
    submit = function_client("submit_task")
    body = {"type": "fail", "payload": {"times": 1, "retryable": False}}
    task_id = submit.post("/tasks", json=body, headers=auth(acme)).get_json()["task_id"]
    pull("aia-tasks")
    worker = function_client("process_task", "cloudevent")
    message = push_body({"task_id": task_id, "tenant_id": "acme"})
    assert worker.post("/", json=message).status_code == 200
    status = function_client("task_status")
    assert status.get(f"/tasks/{task_id}", headers=auth(acme)).get_json()["status"] == "failed"
    counts = status.get("/tasks/counts", headers=auth(acme)).get_json()["counts"]
    assert counts == {s: int(s == "failed") for s in TASK_STATUSES}

    assert_problem(submit.post(f"/tasks/{task_id}:replay", headers=auth(globex)), 404)
    replayed = submit.post(f"/tasks/{task_id}:replay", headers=auth(acme))
    assert replayed.status_code == 202
    view = replayed.get_json()
    assert (view["task_id"], view["status"], view["attempts"]) == (task_id, "queued", 1)
    assert replayed.headers["Location"] == view["status_url"]
    again = submit.post(f"/tasks/{task_id}:replay", headers=auth(acme))
    assert (again.status_code, again.get_json()["status"]) == (202, "queued")
    # Published once: the second replay found it queued already.
    assert [json.loads(m.data)["task_id"] for m in pull("aia-tasks")] == [task_id]

    # Attempt 2 of the same task, with a fresh budget: `times: 1` failed attempt 1 only.
    assert worker.post("/", json=message).status_code == 200
    done = status.get(f"/tasks/{task_id}", headers=auth(acme)).get_json()
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert done["result"] == {"succeeded_on_attempt": 2}
    # A task that succeeded can never be replayed.
    echo = submit.post("/tasks", json={"type": "echo", "payload": {}}, headers=auth(acme))
    echo_id = echo.get_json()["task_id"]
    assert worker.post("/", json=push_body({"task_id": echo_id, "tenant_id": "acme"})).status_code
    conflict = submit.post(f"/tasks/{echo_id}:replay", headers=auth(acme))
    assert assert_problem(conflict, 409)["type"] == "https://aia.dev/problems/not-replayable"
    assert_problem(submit.post("/tasks/unknown:replay", headers=auth(acme)), 404)
    assert_problem(submit.get(f"/tasks/{task_id}:replay", headers=auth(acme)), 405)


def test_cancel_over_http(api_key: Callable[[str], str]) -> None:
    acme, globex = api_key("acme"), api_key("globex")
    submit = function_client("submit_task")
    queued = submit.post("/tasks", json={"type": "echo", "payload": {}}, headers=auth(acme))
    task_id = queued.get_json()["task_id"]
    assert_problem(submit.post(f"/tasks/{task_id}:cancel", headers=auth(globex)), 404)
    cancelled = submit.post(f"/tasks/{task_id}:cancel", headers=auth(acme))
    assert cancelled.status_code == 202
    assert cancelled.get_json()["status"] == "cancelled"
    again = submit.post(f"/tasks/{task_id}:cancel", headers=auth(acme))
    assert (again.status_code, again.get_json()["status"]) == (202, "cancelled")
    worker = function_client("process_task", "cloudevent")
    assert worker.post("/", json=push_body({"task_id": task_id, "tenant_id": "acme"})).status_code
    view = function_client("task_status").get(f"/tasks/{task_id}", headers=auth(acme))
    assert (view.get_json()["status"], view.get_json()["attempts"]) == ("cancelled", 0)

    done = submit.post("/tasks", json={"type": "echo", "payload": {}}, headers=auth(acme))
    done_id = done.get_json()["task_id"]
    assert worker.post("/", json=push_body({"task_id": done_id, "tenant_id": "acme"})).status_code
    conflict = submit.post(f"/tasks/{done_id}:cancel", headers=auth(acme))
    assert assert_problem(conflict, 409)["type"] == "https://aia.dev/problems/conflict"
