"""Through the running stack: a delayed task waits `scheduled`, then runs; a due cron slot fires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.e2e.support import E2E, eventually
from tests.support.problems import assert_problem

pytestmark = pytest.mark.e2e


def test_a_task_delayed_2_s_goes_scheduled_then_succeeded(e2e: E2E) -> None:
    client = e2e.dev()
    answer = client.submit({"type": "echo", "payload": {"later": True}, "delay_s": 2})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "scheduled"
    run_at = datetime.fromisoformat(body["run_at"])
    listed = client.tasks(status="scheduled").json()["tasks"]
    waiting = next(t for t in listed if t["task_id"] == body["task_id"])
    # Still waiting unless the ticker already got to it.
    assert waiting["status"] in ("scheduled", "queued", "running", "succeeded")
    view = client.wait_for(body["task_id"], timeout_s=30)
    assert view["status"] == "succeeded", view
    assert view["result"] == {"later": True}
    assert datetime.fromisoformat(view["run_at"]) == run_at
    # Never started before its time.
    assert datetime.fromisoformat(view["started_at"]) >= run_at


def _set_due(e2e: E2E, schedule_id: str, when: datetime) -> None:
    """Move a schedule's next slot into the past, as if the minute had come."""
    env = e2e.stack.env
    url = (
        f"http://{env['FIRESTORE_EMULATOR_HOST']}/v1/projects/{env['GOOGLE_CLOUD_PROJECT']}"
        f"/databases/(default)/documents/schedules/{schedule_id}"
        "?updateMask.fieldPaths=next_run_at&updateMask.fieldPaths=due_at"
    )
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {"next_run_at": {"timestampValue": stamp}, "due_at": {"timestampValue": stamp}}
    resp = requests.patch(
        url, json={"fields": fields}, headers={"Authorization": "Bearer owner"}, timeout=10
    )
    assert resp.status_code == 200, resp.text


def test_a_due_cron_slot_fires_once_through_the_stacks_ticker(e2e: E2E) -> None:
    client = e2e.dev()
    # Once a year: nothing fires on its own while the session runs.
    body = {
        "cron": "0 0 1 1 *",
        "timezone": "Europe/Paris",
        "task": {"type": "echo", "payload": {"from": "cron"}},
    }
    created = client.request("POST", "/schedules", json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    schedule_id = schedule["schedule_id"]
    assert len(schedule["next_runs"]) == 5
    assert all(run.endswith("T00:00:00+01:00") for run in schedule["next_runs"])
    slot = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    _set_due(e2e, schedule_id, slot)

    def read() -> dict[str, Any]:
        view: dict[str, Any] = client.request("GET", f"/schedules/{schedule_id}").json()
        return view

    fired = eventually(read, lambda v: v.get("fired") == 1, timeout_s=30)
    task_id = fired["last_run"]["task_id"]
    e2e.ledger.record("echo", task_id, client.api_key or "")  # submitted by the ticker, not us
    assert datetime.fromisoformat(fired["last_run"]["slot"]) == slot
    assert fired["next_runs"][0].endswith("-01-01T00:00:00+01:00")
    view = client.wait_for(task_id, timeout_s=30)
    assert view["status"] == "succeeded"
    assert view["result"] == {"from": "cron"}
    # The ticks since (about one a second while the task ran) fired nothing more.
    assert read()["fired"] == 1
    other = e2e.client(e2e.create_key("scheduling-other"))
    assert_problem(other.request("GET", f"/schedules/{schedule_id}"), 404)
    assert client.request("DELETE", f"/schedules/{schedule_id}").status_code == 204
    assert_problem(client.request("GET", f"/schedules/{schedule_id}"), 404)
