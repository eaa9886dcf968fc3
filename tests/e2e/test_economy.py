"""Budgets and limits on the whole local stack: the operators' CLI, 402, 429, /usage, waiting."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.tasks.diagnostic import read_probe
from tests.e2e.support import E2E, eventually, sample
from tests.support.problems import assert_problem

pytestmark = pytest.mark.e2e

ECHO = {"type": "echo", "payload": {"n": 1}}


def _tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _show(e2e: E2E, tenant: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(
        e2e.stack.cli("budgets", "show", "--tenant", tenant, "--json").stdout
    )
    return shown


def _ledger(e2e: E2E, key: str) -> list[dict[str, Any]]:
    client = e2e.client(key)
    entries: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        params = {"limit": "3", **({"page_token": token} if token else {})}
        page = client.request("GET", "/usage/ledger", params=params)
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        token = page.json().get("next_page_token")
        if token is None:
            return entries


def test_a_small_budget_runs_tasks_until_402_and_usage_and_ledger_agree(e2e: E2E) -> None:
    tenant = _tenant("budget")
    key = e2e.create_key(tenant)
    granted = e2e.stack.cli("budgets", "grant", "--tenant", tenant, "--tokens", "5")
    assert "granted 5 tokens" in granted.stderr
    assert _show(e2e, tenant)["balance"] == 5

    client = e2e.client(key)
    accepted = []
    for _ in range(7):
        resp = client.submit(ECHO)
        if resp.status_code != 202:
            break
        accepted.append(resp.json()["task_id"])
    assert len(accepted) == 5
    body = assert_problem(resp, 402)
    assert (body["balance"], body["price"]) == (0, 1)
    for task_id in accepted:
        assert client.wait_for(task_id)["status"] == "succeeded"

    usage = client.request("GET", "/usage")
    assert usage.status_code == 200, usage.text
    shown = usage.json()
    assert (shown["balance"], shown["reserved"]) == (0, 0)
    assert shown["period"]["spent"] == 5
    assert shown["period"]["by_type"] == {"echo": 5}
    assert sum(shown["period"]["by_day"].values()) == 5

    entries = _ledger(e2e, key)
    by_kind: dict[str, int] = {}
    for entry in entries:
        by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + entry["amount"]
    assert by_kind == {"grant": 5, "reserve": 5, "settle": 5}
    assert {e["task_id"] for e in entries if e["kind"] == "settle"} == set(accepted)
    # The ledger and /usage say the same: grants - reserves + refunds = balance.
    assert by_kind["grant"] - by_kind["reserve"] + by_kind.get("refund", 0) == shown["balance"]

    # A monthly allowance tops this month up at once; the CLI checks the escrow's identity.
    e2e.stack.cli("budgets", "set", "--tenant", tenant, "--monthly", "8")
    after = _show(e2e, tenant)
    assert (after["balance"], after["monthly"], after["escrow_balanced"]) == (8, 8, True)
    sixth = client.submit(ECHO)
    assert sixth.status_code == 202
    assert client.wait_for(sixth.json()["task_id"])["status"] == "succeeded"

    metrics = e2e.metrics()
    assert sample(metrics, "aia_tokens_spent_total", tenant=tenant, type="echo") == 6
    assert sample(metrics, "aia_tokens_reserved_total", tenant=tenant, type="echo") == 6
    assert sample(metrics, "aia_admissions_refused_total", tenant=tenant, reason="budget") == 1


def _until_refused(
    submit: Callable[[], requests.Response], tries: int = 6
) -> tuple[list[requests.Response], requests.Response]:
    """Submit until the first 429: the answers admitted before it, and the refusal."""
    admitted: list[requests.Response] = []
    for _ in range(tries):
        resp = submit()
        if resp.status_code == 429:
            return admitted, resp
        assert resp.status_code == 202, resp.text
        admitted.append(resp)
    raise AssertionError(f"no 429 after {tries} submits")


def test_a_rate_limit_set_by_the_operator_is_a_429_with_its_headers(e2e: E2E) -> None:
    tenant = _tenant("limited")
    key = e2e.create_key(tenant)
    set_limits = e2e.stack.cli(
        "tenants", "set-limits", "--tenant", tenant, "--rate", "0.1", "--burst", "2"
    )
    assert "0.1/s, burst 2 on all submits" in set_limits.stderr
    client = e2e.client(key)
    admitted, refused = _until_refused(lambda: client.submit(ECHO))
    # The burst, plus at most the one slot a 10 s boundary crossed meanwhile would add.
    assert 2 <= len(admitted) <= 3
    assert admitted[0].headers["RateLimit-Policy"] == '"tenant";q=1;w=10;aia-burst=2'
    body = assert_problem(refused, 429)
    assert body["violated-policies"] == ["tenant"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert refused.headers["RateLimit"].startswith('"tenant";r=0;t=')
    # A limit on one type leaves the tenant's other types alone.
    other = _tenant("typed")
    other_key = e2e.create_key(other)
    e2e.stack.cli(
        "tenants",
        "set-limits",
        "--tenant",
        other,
        "--rate",
        "0.1",
        "--burst",
        "1",
        "--type",
        "sleep",
    )
    typed = e2e.client(other_key)
    sleeps, _ = _until_refused(lambda: typed.submit({"type": "sleep", "payload": {"seconds": 0}}))
    assert 1 <= len(sleeps) <= 2
    assert all(typed.submit(ECHO).status_code == 202 for _ in range(3))
    eventually(
        lambda: sample(e2e.metrics(), "aia_admissions_refused_total", tenant=tenant, reason="rate"),
        lambda n: n >= 1,
    )


def test_the_operator_cli_refuses_bad_budget_input(e2e: E2E) -> None:
    refused = e2e.stack.cli("budgets", "grant", "--tenant", "t", "--tokens", "0", check=False)
    assert refused.returncode == 2
    incomplete = e2e.stack.cli("tenants", "set-limits", "--tenant", "t", "--rate", "1", check=False)
    assert incomplete.returncode == 2
    assert "needs --rate and --burst" in incomplete.stderr
    too_many = e2e.stack.cli(
        "tenants", "set-limits", "--tenant", "t", "--max-running", "101", check=False
    )
    assert too_many.returncode == 2
    assert "0-100" in too_many.stderr
    none = _show(e2e, _tenant("nobody"))
    assert none == {"tenant_id": none["tenant_id"], "budgeted": False, "limits": {"rate": {}}}


def test_a_tenants_max_running_set_by_the_operator_makes_the_rest_wait(e2e: E2E) -> None:
    tenant = _tenant("running")
    key = e2e.create_key(tenant)
    set_limits = e2e.stack.cli("tenants", "set-limits", "--tenant", tenant, "--max-running", "1")
    assert "max_running 1" in set_limits.stderr
    assert "max_running\t1" in set_limits.stdout
    client = e2e.client(key)
    marker = f"tenant-{uuid.uuid4().hex[:10]}"
    body = {"type": "probe", "payload": {"marker": marker, "seconds": 0.5}, "priority": 7}
    ids = []
    for _ in range(4):
        resp = client.submit(body)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["task_id"])
    eventually(
        lambda: [client.task(t).json() for t in ids],
        lambda views: any(
            v["status"] == "queued" and v.get("blocked_by") == "tenant:max_running" for v in views
        ),
        timeout_s=30,
    )
    for task_id in ids:
        view = client.wait_for(task_id, timeout_s=120)
        assert view["status"] == "succeeded"
        assert view["priority"] == 7
    probe = read_probe(marker, Path(e2e.stack.env["AIA_DIAGNOSTIC_DIR"]))
    assert len(probe["attempts"]) == 4
    assert probe["max_concurrency"] == 1
    cleared = e2e.stack.cli("tenants", "set-limits", "--tenant", tenant, "--max-running", "0")
    assert "max_running no limit" in cleared.stderr
