"""The local stack, driven over HTTP only, through every rule of the task pipeline."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.client import AiaClient
from devtools.stack import REPO_ROOT
from shared.operations.metrics import FINISHED_STATUSES, LIVE_STATUSES
from tests.e2e.support import API_KEY_CACHE_S, E2E, MetricKey, eventually, mentions, sample
from tests.support.problems import assert_problem
from tests.support.pubsub import Received

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def _tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the stack itself ---------------------------------------------------------------


def test_health_answers_operators_and_liveness_without_credentials(e2e: E2E) -> None:
    operator = {"Authorization": f"Bearer {e2e.stack.env['AIA_METRICS_TOKEN']}"}
    for path in ("/health", "/"):
        assert requests.get(e2e.stack.base_url + path, timeout=10).status_code == 401
        resp = requests.get(e2e.stack.base_url + path, headers=operator, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "ok", body
        assert body["checks"]["firestore"]["ok"] is True
        assert body["checks"]["pubsub"]["ok"] is True
    live = requests.get(e2e.stack.base_url + "/health?probe=live", timeout=10)
    assert live.status_code == 200


def test_unknown_route_is_problem_404(e2e: E2E) -> None:
    body = assert_problem(requests.get(e2e.stack.base_url + "/nowhere", timeout=10), 404)
    assert "/nowhere" in body["detail"]


def test_dev_env_is_sourceable_and_points_at_the_stack(e2e: E2E) -> None:
    dev_env = e2e.stack.state_dir / "dev.env"
    names = ["FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"]
    names += ["AIA_BASE_URL", "AIA_KEYRING_FILE", "AIA_API_KEY"]
    script = f"source {dev_env} && " + " && ".join(f'echo "${name}"' for name in names)
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env={}
    ).stdout.splitlines()
    assert dict(zip(names, out, strict=True)) == {n: e2e.stack.env[n] for n in names}
    assert e2e.stack.env["AIA_BASE_URL"] == e2e.stack.base_url
    assert e2e.stack.env["AIA_API_KEY"] == e2e.stack.api_key


def test_a_taken_port_fails_clearly(e2e: E2E, tmp_path: Path) -> None:
    port = e2e.stack.base_url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "devtools.stack", "--port", port, "--state-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "already in use" in result.stderr
    # It gave up before starting anything: no emulator logs were even opened.
    assert not list((tmp_path / "logs").glob("*-emulator.log"))


# --- credentials and tenants ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/tasks"), ("POST", "/tasks/submit"), ("GET", "/tasks")]
)
def test_missing_credentials_are_401_with_bearer_challenge(
    e2e: E2E, method: str, path: str
) -> None:
    resp = requests.request(method, e2e.stack.base_url + path, json={}, timeout=10)
    assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_credentials_for_one_task_are_401(e2e: E2E) -> None:
    resp = requests.get(e2e.stack.base_url + "/tasks/whatever", timeout=10)
    assert_problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "key", ["not-a-key", "aia_0123456789abcdef_" + "A" * 43, "aia_0123456789abcdef_short"]
)
def test_bad_keys_are_401(e2e: E2E, key: str) -> None:
    client = e2e.client(key)
    for resp in (client.submit({"type": "echo", "payload": {}}), client.tasks()):
        assert_problem(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_stops_working_within_the_cache_bound_everywhere(e2e: E2E) -> None:
    key = e2e.create_key(_tenant("revoked"))
    client = e2e.client(key)
    task_id = client.submit({"type": "echo", "payload": {"n": 1}}).json()["task_id"]
    assert client.task(task_id).status_code == 200
    e2e.revoke_key(key)
    # Both functions (separate instances, each with its own cache) refuse it once the
    # bound has passed; the deadline leaves room for a loaded machine, not for the bound.
    eventually(
        lambda: client.task(task_id).status_code, lambda s: s == 401, timeout_s=API_KEY_CACHE_S + 10
    )
    eventually(
        lambda: client.submit({"type": "echo", "payload": {}}).status_code,
        lambda s: s == 401,
        timeout_s=API_KEY_CACHE_S + 10,
    )
    assert_problem(client.task(task_id), 401)
    assert_problem(client.tasks(), 401)
    assert_problem(client.submit({"type": "echo", "payload": {}}), 401)


def test_tenants_never_see_each_others_tasks(e2e: E2E) -> None:
    alice = e2e.client(e2e.create_key(_tenant("alice")))
    bob = e2e.client(e2e.create_key(_tenant("bob")))
    task_id = alice.submit({"type": "echo", "payload": {"secret": "alice"}}).json()["task_id"]
    alice.wait_for(task_id)
    bob_own = bob.submit({"type": "echo", "payload": {"mine": "bob"}}).json()["task_id"]

    assert_problem(bob.task(task_id), 404)
    bob_ids = {t["task_id"] for t in bob.tasks(limit=100).json()["tasks"]}
    assert task_id not in bob_ids
    assert bob_own in bob_ids
    alice_ids = {t["task_id"] for t in alice.tasks(limit=100).json()["tasks"]}
    assert task_id in alice_ids
    assert bob_own not in alice_ids
    assert alice.task(task_id).json()["result"] == {"secret": "alice"}


# --- submit errors ----------------------------------------------------------------------------


def test_malformed_json_is_400(e2e: E2E) -> None:
    assert_problem(e2e.dev().submit(raw=b'{"type": "echo", "payload": '), 400)


def test_unknown_type_is_422_naming_type(e2e: E2E) -> None:
    body = assert_problem(e2e.dev().submit({"type": "no.such.type", "payload": {}}), 422)
    assert body["field"] == "type"


def test_invalid_payload_is_422_naming_the_field(e2e: E2E) -> None:
    body = assert_problem(e2e.dev().submit({"type": "sleep", "payload": {"seconds": 99}}), 422)
    assert body["field"] == "payload.seconds"


def test_body_over_one_mib_is_413(e2e: E2E) -> None:
    raw = b'{"type": "echo", "payload": {"x": "' + b"a" * MiB + b'"}}'
    for path in ("/tasks", "/tasks/submit"):
        assert_problem(e2e.dev().submit(raw=raw, path=path), 413)


def test_unknown_task_id_is_404(e2e: E2E) -> None:
    assert_problem(e2e.dev().task(uuid.uuid4().hex), 404)


# --- idempotency ------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_replays_the_original(e2e: E2E) -> None:
    client = e2e.dev()
    key = uuid.uuid4().hex
    body = {"type": "echo", "payload": {"order": 42}}
    first = client.submit(body, idempotency_key=key)
    assert first.status_code == 202, first.text
    assert first.headers.get("Idempotent-Replayed") is None
    again = client.submit(body, idempotency_key=key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["task_id"] == first.json()["task_id"]
    # Per tenant: another tenant's identical request is a new task.
    other = e2e.client(e2e.create_key(_tenant("idem"))).submit(body, idempotency_key=key)
    assert other.status_code == 202
    assert other.json()["task_id"] != first.json()["task_id"]


def test_same_idempotency_key_with_another_body_is_422(e2e: E2E) -> None:
    client = e2e.dev()
    key = uuid.uuid4().hex
    assert client.submit({"type": "echo", "payload": {"a": 1}}, idempotency_key=key).ok
    assert_problem(client.submit({"type": "echo", "payload": {"a": 2}}, idempotency_key=key), 422)


# --- the worker: retries, dead letters, duplicates ----------------------------------------


def test_echo_succeeds_with_its_payload(e2e: E2E) -> None:
    client = e2e.dev()
    resp = client.submit({"type": "echo", "payload": {"hello": "world"}})
    assert resp.status_code == 202
    answer = resp.json()
    assert answer["status"] == "queued"
    assert answer["status_url"] == f"{e2e.stack.base_url}/tasks/{answer['task_id']}"
    assert resp.headers["Location"] == answer["status_url"]
    view = client.wait_for(answer["task_id"])
    assert view["status"] == "succeeded"
    assert view["result"] == {"hello": "world"}
    assert view["attempts"] == 1
    assert "error" not in view
    # The seed's path submits the same way.
    seed = client.submit({"type": "echo", "payload": {"via": "seed"}}, path="/tasks/submit")
    assert seed.status_code == 202, seed.text
    assert client.wait_for(seed.json()["task_id"])["result"] == {"via": "seed"}


def test_failing_once_succeeds_on_attempt_two(e2e: E2E) -> None:
    client = e2e.dev()
    task_id = client.submit({"type": "fail", "payload": {"times": 1}}).json()["task_id"]
    view = client.wait_for(task_id)
    assert view["status"] == "succeeded", view
    assert view["attempts"] == 2
    assert view["result"] == {"succeeded_on_attempt": 2}


def test_always_failing_ends_failed_and_is_dead_lettered(e2e: E2E) -> None:
    client = e2e.dev()
    body = {"type": "fail", "payload": {"times": 10}, "max_attempts": 2}
    task_id = client.submit(body).json()["task_id"]
    view = client.wait_for(task_id)
    assert view["status"] == "failed", view
    assert view["attempts"] == 2
    assert view["error"]["message"]
    assert "result" not in view

    seen: list[Received] = []

    def dead_letters() -> list[Received]:
        seen.extend(e2e.pubsub.pull("aia-tasks-dead-letter-sub"))
        return seen

    eventually(dead_letters, lambda msgs: any(mentions(m, task_id) for m in msgs))


def test_non_retryable_failure_fails_at_once(e2e: E2E) -> None:
    client = e2e.dev()
    body = {"type": "fail", "payload": {"times": 5, "retryable": False}}
    view = client.wait_for(client.submit(body).json()["task_id"])
    assert view["status"] == "failed", view
    assert view["attempts"] == 1


def test_the_same_message_delivered_twice_runs_once(e2e: E2E) -> None:
    spy = f"e2e-spy-{uuid.uuid4().hex[:8]}"
    e2e.pubsub.create_subscription(spy, "aia-tasks")

    def echo_runs() -> float:
        return sample(e2e.metrics(), "aia_task_duration_seconds_count", type="echo")

    client = e2e.dev()
    # Earlier tests' tasks are finished; wait until their durations are all recorded.
    before = eventually(echo_runs, lambda n: n == e2e.ledger.submitted["echo"], timeout_s=60.0)
    task_id = client.submit({"type": "echo", "payload": {"dup": True}}).json()["task_id"]
    assert client.wait_for(task_id)["attempts"] == 1
    eventually(echo_runs, lambda n: n == before + 1)

    # The exact message the submit published, captured by the spy subscription.
    captured: list[Received] = []

    def spied() -> list[Received]:
        captured.extend(e2e.pubsub.pull(spy))
        return captured

    eventually(spied, lambda msgs: any(mentions(m, task_id) for m in msgs))
    original = next(m for m in captured if mentions(m, task_id))
    message_id = e2e.pubsub.publish("aia-tasks", original.data, original.attributes)

    # Wait until the worker has handled the duplicate delivery, then check nothing ran.
    eventually(e2e.worker_log, lambda log: f'"message_id": "{message_id}"' in log)
    view = client.task(task_id).json()
    assert view["status"] == "succeeded"
    assert view["attempts"] == 1
    assert echo_runs() == before + 1


def test_a_burst_of_concurrent_submits_loses_nothing(e2e: E2E) -> None:
    n = 40

    def submit(i: int) -> str:
        resp = e2e.dev().submit({"type": "echo", "payload": {"i": i}})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        ids = list(pool.map(submit, range(n)))
    assert len(set(ids)) == n
    client = e2e.dev()
    for i, task_id in enumerate(ids):
        view = client.wait_for(task_id, timeout_s=60.0)
        assert view["status"] == "succeeded", view
        assert view["result"] == {"i": i}


# --- listing ----------------------------------------------------------------------------------


def test_pagination_has_no_overlap_and_no_gaps(e2e: E2E) -> None:
    client = e2e.client(e2e.create_key(_tenant("pager")))
    ids = [client.submit({"type": "echo", "payload": {"i": i}}).json()["task_id"] for i in range(7)]
    ids.append(client.submit({"type": "sleep", "payload": {"seconds": 0}}).json()["task_id"])
    for task_id in ids:
        client.wait_for(task_id)

    pages: list[list[dict[str, Any]]] = []
    token: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if token:
            params["page_token"] = token
        resp = client.tasks(**params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        pages.append(page["tasks"])
        token = page.get("next_page_token")
        if not token:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(p) for p in pages] == [3, 3, 2]
    listed = [t["task_id"] for p in pages for t in p]
    assert len(listed) == len(set(listed)) == len(ids)
    assert set(listed) == set(ids)
    created = [datetime.fromisoformat(t["created_at"]) for p in pages for t in p]
    assert created == sorted(created, reverse=True), "not newest first"
    # The same walk, filtered.
    only_sleep = client.tasks(type="sleep").json()
    assert [t["task_id"] for t in only_sleep["tasks"]] == [ids[-1]]
    assert "next_page_token" not in only_sleep
    succeeded = client.tasks(status="succeeded", limit=100).json()["tasks"]
    assert {t["task_id"] for t in succeeded} == set(ids)


# --- metrics (last: they account for every task above) -------------------------------------


def test_metrics_match_what_was_submitted(e2e: E2E) -> None:
    # Every accepted task first reaches a terminal status (as far as its owner can still see).
    clients: dict[str, AiaClient] = {}
    for task_id, (_, key) in list(e2e.ledger.tasks.items()):
        if key in e2e.ledger.revoked:
            continue
        client = clients.setdefault(key, AiaClient(e2e.stack.base_url, key))
        client.wait_for(task_id, timeout_s=60.0)
    submitted = dict(e2e.ledger.submitted)
    assert submitted.get("echo"), "no echo task was submitted in this session"

    def accounted(samples: dict[MetricKey, float], task_type: str) -> float:
        return sum(
            sample(samples, "aia_tasks", status=status, type=task_type) for status in LIVE_STATUSES
        ) + sum(
            sample(samples, "aia_tasks_finished_total", status=status, type=task_type)
            for status in FINISHED_STATUSES
        )

    # An instance's counts ride its next commit after its flush interval (10 s), or
    # get a commit of their own 5 s later once it goes quiet: the last task of each
    # type to end may show up up to 15 s after its status did.
    samples = eventually(
        e2e.metrics,
        lambda s: (
            sample(s, "aia_task_duration_seconds_count", type="echo") == submitted["echo"]
            and all(accounted(s, task_type) == n for task_type, n in submitted.items())
        ),
        timeout_s=45.0,
    )
    for task_type, n in submitted.items():
        assert sample(samples, "aia_tasks_submitted_total", type=task_type) == n, task_type
        assert accounted(samples, task_type) == n, task_type
        assert sample(samples, "aia_tasks", status="queued", type=task_type) == 0
        assert sample(samples, "aia_tasks", status="running", type=task_type) == 0

    resp = requests.get(
        e2e.stack.base_url + "/metrics",
        headers={
            "Accept": "application/json",
            "Authorization": f"Bearer {e2e.stack.env['AIA_METRICS_TOKEN']}",
        },
        timeout=10,
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    figures = resp.json()
    for task_type, n in submitted.items():
        assert figures["aia_tasks_submitted_total"][task_type] == n
    assert figures["aia_task_duration_seconds"]["echo"]["count"] == submitted["echo"]
    assert figures["aia_tasks_finished_total"]["succeeded"]["echo"] == submitted["echo"]
