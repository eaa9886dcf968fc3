"""schedules and schedule_tick through create_app: answers, problem answers, tenant isolation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.problems import assert_problem
from tests.support.routes import assert_serves_only

from .conftest import function_client

pytestmark = pytest.mark.integration

HOURLY = {"cron": "0 * * * *", "timezone": "Europe/Paris", "task": {"type": "echo", "payload": {}}}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_create_read_list_pause_resume_delete(api_key: Callable[[str], str]) -> None:
    client = function_client("schedules")
    key = auth(api_key("acme"))
    created = client.post("/schedules", json=HOURLY, headers=key)
    assert created.status_code == 201, created.get_data(as_text=True)
    body = created.get_json()
    schedule_id = body["schedule_id"]
    assert created.headers["Location"] == f"https://aia.example/schedules/{schedule_id}"
    assert body["state"] == "active"
    assert body["task"] == {"type": "echo", "max_attempts": 3, "timeout_s": 60}
    assert "payload" not in body["task"]
    runs = [datetime.fromisoformat(r) for r in body["next_runs"]]
    assert len(runs) == 5
    assert all(r.minute == 0 and r.utcoffset() is not None for r in runs)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(runs))
    assert runs[0] > datetime.now(UTC)
    assert client.get(f"/schedules/{schedule_id}", headers=key).get_json() == body
    listed = client.get("/schedules", headers=key).get_json()
    assert [s["schedule_id"] for s in listed["schedules"]] == [schedule_id]
    paused = client.post(f"/schedules/{schedule_id}:pause", headers=key)
    assert (paused.status_code, paused.get_json()["state"]) == (200, "paused")
    resumed = client.post(f"/schedules/{schedule_id}:resume", headers=key)
    assert (resumed.status_code, resumed.get_json()["state"]) == (200, "active")
    assert len(resumed.get_json()["next_runs"]) == 5
    deleted = client.delete(f"/schedules/{schedule_id}", headers=key)
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert_problem(client.get(f"/schedules/{schedule_id}", headers=key), 404)


def test_another_tenants_schedule_is_a_404(api_key: Callable[[str], str]) -> None:
    client = function_client("schedules")
    theirs = client.post("/schedules", json=HOURLY, headers=auth(api_key("globex")))
    schedule_id = theirs.get_json()["schedule_id"]
    mine = auth(api_key("acme"))
    for method, path in [
        ("GET", f"/schedules/{schedule_id}"),
        ("POST", f"/schedules/{schedule_id}:pause"),
        ("POST", f"/schedules/{schedule_id}:resume"),
        ("DELETE", f"/schedules/{schedule_id}"),
    ]:
        assert_problem(client.open(path, method=method, headers=mine), 404)
    assert client.get("/schedules", headers=mine).get_json() == {"schedules": []}
    assert (
        client.get(f"/schedules/{schedule_id}", headers=auth(api_key("globex"))).status_code == 200
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOURLY, "cron": "every hour"}, "cron"),
        ({**HOURLY, "cron": "0 * * * * *"}, "cron"),
        ({**HOURLY, "timezone": "CEST"}, "timezone"),
        ({k: v for k, v in HOURLY.items() if k != "timezone"}, "timezone"),
        ({**HOURLY, "task": {"type": "nope", "payload": {}}}, "task.type"),
        ({**HOURLY, "task": {"type": "echo"}}, "task.payload"),
        ({**HOURLY, "task": {"type": "sleep", "payload": {"seconds": 99}}}, "task.payload.seconds"),
        ({**HOURLY, "task": {"type": "echo", "payload": {}, "timeout_s": 0}}, "task.timeout_s"),
        ({**HOURLY, "task": {"type": "echo", "payload": {}, "extra": 1}}, "task.extra"),
        (
            {**HOURLY, "task": {"type": "echo", "payload": {}, "run_at": "2030-01-01T00:00:00Z"}},
            "task.run_at",
        ),
        ({**HOURLY, "task": "echo"}, "task"),
        ({**HOURLY, "overlap": "queue_all"}, "overlap"),
        ({**HOURLY, "catchup_window_s": 86400}, "catchup_window_s"),
        ({**HOURLY, "colour": "blue"}, "colour"),
    ],
)
def test_bad_schedules_are_422_naming_the_field(
    api_key: Callable[[str], str], body: dict[str, object], field: str
) -> None:
    response = function_client("schedules").post(
        "/schedules", json=body, headers=auth(api_key("acme"))
    )
    assert_problem(response, 422, field)


def test_schedules_routes_methods_and_auth(api_key: Callable[[str], str]) -> None:
    client = function_client("schedules")
    assert_problem(client.get("/schedules"), 401)
    assert_problem(client.post("/schedules", json=HOURLY), 401)
    key = auth(api_key("acme"))
    assert_problem(
        client.post(
            "/schedules", data=b"{not json", headers={**key, "Content-Type": "application/json"}
        ),
        400,
    )
    assert_problem(client.get("/schedules?limit=0", headers=key), 422, "limit")
    assert_problem(client.get("/schedules?page_token=nope", headers=key), 400)
    assert_problem(client.get("/schedules/0123/extra", headers=key), 404)
    assert_problem(client.post(f"/schedules/{'a' * 32}:explode", headers=key), 404)
    missing = client.put("/schedules", headers=key)
    assert_problem(missing, 405)
    assert missing.headers["Allow"] == "GET, POST, HEAD"
    assert_serves_only(
        client,
        path=f"/schedules/{'a' * 32}",
        unknown=f"/schedules/{'a' * 32}/x",
        allow="DELETE, GET, HEAD",
        refused=("POST", "PUT", "PATCH"),
    )
    pause = client.get(f"/schedules/{'a' * 32}:pause", headers=key)
    assert_problem(pause, 405)
    assert pause.headers["Allow"] == "POST"


def test_delayed_submit_answers_scheduled_with_run_at(api_key: Callable[[str], str]) -> None:
    submit = function_client("submit_task")
    key = auth(api_key("acme"))
    response = submit.post(
        "/tasks", json={"type": "echo", "payload": {}, "delay_s": 120}, headers=key
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "scheduled"
    run_at = datetime.fromisoformat(body["run_at"])
    assert timedelta(seconds=100) < run_at - datetime.now(UTC) <= timedelta(seconds=120)
    view = function_client("task_status").get(f"/tasks/{body['task_id']}", headers=key).get_json()
    assert (view["status"], datetime.fromisoformat(view["run_at"])) == ("scheduled", run_at)
    listed = function_client("task_status").get("/tasks?status=scheduled", headers=key).get_json()
    assert [t["task_id"] for t in listed["tasks"]] == [body["task_id"]]
    now = submit.post("/tasks", json={"type": "echo", "payload": {}, "delay_s": 0.5}, headers=key)
    assert now.get_json()["status"] == "queued"
    assert "run_at" not in now.get_json()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"run_at": "next tuesday"}, "run_at"),
        ({"run_at": 1900000000}, "run_at"),
        ({"run_at": "2099-01-01T00:00:00Z"}, "run_at"),
        ({"delay_s": -5}, "delay_s"),
        ({"delay_s": "soon"}, "delay_s"),
        ({"delay_s": 400 * 86400}, "delay_s"),
        ({"delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}, "delay_s"),
    ],
)
def test_bad_start_times_are_422_naming_the_field(
    api_key: Callable[[str], str], extra: dict[str, object], field: str
) -> None:
    body = {"type": "echo", "payload": {}, **extra}
    response = function_client("submit_task").post(
        "/tasks", json=body, headers=auth(api_key("acme"))
    )
    assert_problem(response, 422, field)


def test_tick_dispatches_a_due_task_and_answers_counts(
    api_key: Callable[[str], str], configure: Callable[..., None]
) -> None:
    key = auth(api_key("acme"))
    body = (
        function_client("submit_task")
        .post("/tasks", json={"type": "echo", "payload": {}, "delay_s": 60}, headers=key)
        .get_json()
    )
    tick = function_client("schedule_tick")
    assert tick.post("/").get_json()["tasks_dispatched"] == 0  # not due yet
    # Due now: as if the minute had passed.
    from shared.clients import firestore_client

    firestore_client().collection("tasks").document(body["task_id"]).update(
        {"run_at": datetime.now(UTC) - timedelta(seconds=1)}
    )
    answer = tick.post("/", json={})
    assert answer.status_code == 200
    counts = answer.get_json()
    assert counts["ticks"] == 1
    assert counts["tasks_dispatched"] == 1
    view = function_client("task_status").get(f"/tasks/{body['task_id']}", headers=key).get_json()
    assert view["status"] == "queued"
    assert_problem(tick.post("/", json={"for_s": 1000}), 422, "for_s")
    assert_problem(tick.post("/", json={"every": 1}), 422, "every")
    assert_problem(tick.get("/"), 405)
