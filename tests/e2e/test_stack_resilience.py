"""The local stack survives crashed functions as production does, and stops cleanly regardless.

These tests kill and freeze processes, so they run on stacks of their own, never
on the session's shared one.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.client import AiaClient
from devtools.procs import group_alive, kill_group
from devtools.stack_process import RunningStack, running_stack, start_stack
from tests.e2e.support import eventually

pytestmark = pytest.mark.e2e

RESTART_DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # running_stack raises if any group any child ever led is left running.
    with running_stack(tmp_path_factory.mktemp("resilient")) as running:
        yield running
    assert running.proc.returncode == 0, running.read_output()


def _live(stack: RunningStack) -> int:
    return requests.get(stack.base_url + "/health?probe=live", timeout=10).status_code


def _stack_log(stack: RunningStack) -> str:
    return (stack.state_dir / "logs" / "stack.log").read_text(encoding="utf-8")


def _is_problem(resp: requests.Response, statuses: tuple[int, ...]) -> bool:
    return resp.status_code in statuses and resp.headers.get("Content-Type", "").startswith(
        "application/problem+json"
    )


# --- a crashed function is restarted on its port ----------------------------------------


def test_a_killed_worker_is_restarted_and_tasks_run_again(stack: RunningStack) -> None:
    client = AiaClient(stack.base_url, stack.api_key)
    before = stack.restarts("process_task")
    old = stack.kill_function("process_task")

    # The rest of the stack keeps serving while the worker is down.
    assert _live(stack) == 200
    stack.wait_restarted("process_task", before + 1, timeout_s=RESTART_DEADLINE_S)
    assert stack.proc.poll() is None, stack.read_output()
    new = stack.pgid("process_task")
    assert new != old
    assert not group_alive(old, stack.marker)
    assert stack.children()["process_task"]["last_exit"] == "SIGKILL"
    assert _live(stack) == 200

    line = "process_task exited (SIGKILL)"
    assert line in _stack_log(stack)
    assert f"aia: {line}" in stack.read_output()
    assert "restart #1 (attempt 1) in 0.5 s" in _stack_log(stack)

    # Same port: Pub/Sub's push subscription still reaches the new process.
    resp = client.submit({"type": "echo", "payload": {"after": "restart"}})
    assert resp.status_code == 202, resp.text
    view = client.wait_for(resp.json()["task_id"], timeout_s=60)
    assert view["status"] == "succeeded", view
    assert view["result"] == {"after": "restart"}


def test_a_killed_submit_answers_problems_then_accepts_again(stack: RunningStack) -> None:
    client = AiaClient(stack.base_url, stack.api_key)
    body: dict[str, Any] = {"type": "echo", "payload": {"n": 1}}
    before = stack.restarts("submit_task")
    stack.kill_function("submit_task")

    # Its port is closed (502) or the stack already knows it is down (503).
    down = requests.post(
        stack.base_url + "/tasks",
        json=body,
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=30,
    )
    assert _is_problem(down, (502, 503)), (down.status_code, down.headers, down.text)
    assert _live(stack) == 200

    stack.wait_restarted("submit_task", before + 1, timeout_s=RESTART_DEADLINE_S)
    resp = client.submit(body)
    assert resp.status_code == 202, resp.text
    assert "submit_task exited (SIGKILL)" in _stack_log(stack)


def test_a_function_killed_twice_is_restarted_twice(stack: RunningStack) -> None:
    before = stack.restarts("task_status")
    for n in (1, 2):
        stack.kill_function("task_status")
        stack.wait_restarted("task_status", before + n, timeout_s=RESTART_DEADLINE_S)
    assert len(stack.all_pgids()["task_status"]) == before + 3
    resp = AiaClient(stack.base_url, stack.api_key).tasks(limit=1)
    assert resp.status_code == 200, resp.text


def test_a_frozen_emulator_degrades_health_until_thawed(stack: RunningStack) -> None:
    def health() -> requests.Response:
        token = {"Authorization": f"Bearer {stack.env['AIA_METRICS_TOKEN']}"}
        return requests.get(stack.base_url + "/health", headers=token, timeout=30)

    with stack.frozen("firestore-emulator") as pgid:
        assert pgid == stack.pgid("firestore-emulator")
        resp = health()
        assert resp.status_code == 503, resp.text
        assert resp.json()["checks"]["firestore"]["ok"] is False
        assert resp.json()["checks"]["pubsub"]["ok"] is True
    eventually(lambda: health().status_code, lambda status: status == 200, timeout_s=60)
    assert stack.proc.poll() is None  # a hung emulator is not a dead one
    assert stack.restarts("health") == 0


# --- the Pub/Sub topology: a backstop between Pub/Sub's dead-letter policy and ours ------


def _subscription(stack: RunningStack, name: str) -> dict[str, Any]:
    env = stack.env
    url = (
        f"http://{env['PUBSUB_EMULATOR_HOST']}/v1/projects/{env['GOOGLE_CLOUD_PROJECT']}"
        f"/subscriptions/{name}"
    )
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_pubsub_dead_letters_go_to_a_backstop_pushed_back_to_the_worker(
    stack: RunningStack,
) -> None:
    project = stack.env["GOOGLE_CLOUD_PROJECT"]
    topics = f"projects/{project}/topics"
    worker_url = stack.info["functions"]["process_task"]

    worker = _subscription(stack, "aia-tasks-worker")
    assert worker["topic"] == f"{topics}/aia-tasks"
    assert worker["pushConfig"]["pushEndpoint"] == f"{worker_url}/{topics}/aia-tasks"
    assert worker["deadLetterPolicy"]["deadLetterTopic"] == f"{topics}/aia-tasks-backstop"
    assert worker["retryPolicy"]["maximumBackoff"] == "4s"  # Options.retry_max_backoff_s

    backstop = _subscription(stack, "aia-tasks-backstop-worker")
    assert backstop["topic"] == f"{topics}/aia-tasks-backstop"
    assert backstop["pushConfig"]["pushEndpoint"] == f"{worker_url}/{topics}/aia-tasks-backstop"
    assert backstop["retryPolicy"] == worker["retryPolicy"]
    assert backstop["ackDeadlineSeconds"] == worker["ackDeadlineSeconds"]
    assert "deadLetterPolicy" not in backstop

    dead = _subscription(stack, "aia-tasks-dead-letter-sub")
    assert dead["topic"] == f"{topics}/aia-tasks-dead-letter"
    assert not dead.get("pushConfig", {}).get("pushEndpoint")  # pulled, by operators


# --- stopping: during a backoff, during a restart, and on an emulator's death ------------

HEALTH = """
import time
from pathlib import Path

import functions_framework

if Path({flag!r}).exists():
    time.sleep(600)  # a restart that never gets to serve


@functions_framework.http
def health(request):
    return {{"status": "ok"}}
"""


def _small_stack(tmp_path: Path, *extra_args: str) -> tuple[RunningStack, Path]:
    """A stack serving one tiny `health` function; touching the flag makes restarts hang."""
    flag = tmp_path / "hang-on-start"
    source = tmp_path / "functions" / "health" / "main.py"
    source.parent.mkdir(parents=True)
    source.write_text(HEALTH.format(flag=str(flag)), encoding="utf-8")
    args = ["--functions-dir", str(tmp_path / "functions"), *extra_args]
    return start_stack(tmp_path / "state", extra_args=args), flag


def _assert_stopped_cleanly(stack: RunningStack, expected_code: int = 0) -> None:
    leftovers = stack.stop()
    assert stack.proc.returncode == expected_code, stack.read_output()
    assert not leftovers, f"children left running: {leftovers}"
    for name, pgids in stack.all_pgids().items():
        assert not any(group_alive(pgid, stack.marker) for pgid in pgids), name


def test_sigterm_during_a_restart_backoff_stops_everything(tmp_path: Path) -> None:
    stack, _ = _small_stack(tmp_path, "--restart-backoff", "600")
    try:
        assert _live(stack) == 200
        stack.kill_function("health")
        eventually(lambda: stack.state("health"), lambda state: state == "down")
        assert _is_problem(requests.get(stack.base_url + "/health", timeout=10), (503,))
    finally:
        _assert_stopped_cleanly(stack)
    assert "restart #1 (attempt 1) in 600 s" in stack.read_output()


def test_sigterm_during_a_hanging_restart_stops_everything(tmp_path: Path) -> None:
    stack, flag = _small_stack(tmp_path)
    try:
        flag.touch()
        stack.kill_function("health")
        eventually(
            lambda: (stack.restarts("health"), stack.state("health")),
            lambda seen: seen == (1, "starting"),
            timeout_s=RESTART_DEADLINE_S,
        )
        restarted = stack.pgid("health")
        assert group_alive(restarted, stack.marker)
        # Frozen as well: the stack must still get it to stop.
        kill_group(restarted, signal.SIGSTOP, marker=stack.marker)
        assert _is_problem(requests.get(stack.base_url + "/health", timeout=10), (503,))
    finally:
        _assert_stopped_cleanly(stack)


def test_an_emulators_death_stops_the_stack_with_its_log(tmp_path: Path) -> None:
    stack, _ = _small_stack(tmp_path)
    try:
        kill_group(stack.pgid("pubsub-emulator"), marker=stack.marker)
        stack.proc.wait(timeout=60)
        output = stack.read_output()
        assert "pubsub-emulator exited" in output
        assert "stopping the stack" in output
        assert "Last lines of" in output
    finally:
        _assert_stopped_cleanly(stack, expected_code=1)
