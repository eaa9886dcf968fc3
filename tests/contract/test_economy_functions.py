"""Budgets and rate limits through the real functions: 402 and 429 answers, /usage, /metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aia_client.errors import BudgetExhausted, RateLimited, error_from_response
from shared import providers
from shared.flow.limits_store import ALL_TYPES, LimitSpec
from tests.support.problems import assert_problem
from tests.support.routes import assert_serves_only

from .conftest import function_client

pytestmark = pytest.mark.integration

ECHO = {"type": "echo", "payload": {"x": 1}}
# RFC 8941 shapes the draft's fields take here: a list of sf-string items with parameters.
POLICY = re.compile(r'^"[^"]+";q=\d+;w=\d+;aia-burst=\d+(, "[^"]+";q=\d+;w=\d+;aia-burst=\d+)*$')
SERVICE_LIMIT = re.compile(r'^"[^"]+";r=\d+;t=\d+(, "[^"]+";r=\d+;t=\d+)*$')


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_httpx(response: Any) -> httpx.Response:
    """The Flask test answer as the SDK would receive it."""
    return httpx.Response(
        response.status_code, headers=dict(response.headers), content=response.get_data()
    )


def test_a_budget_too_small_is_a_402_the_sdk_reads_and_nothing_is_stored(
    configure: Callable[..., None], api_key: Callable[[str], str]
) -> None:
    configure(AIA_TASK_PRICES="echo=3")
    key = api_key("acme")
    providers.budget_bank().grant("acme", 5)
    client = function_client("submit_task")
    assert client.post("/tasks", json=ECHO, headers=auth(key)).status_code == 202
    refused = client.post("/tasks", json=ECHO, headers=auth(key))
    body = assert_problem(refused, 402)
    assert body["type"] == "https://aia.dev/problems/budget-exhausted"
    assert (body["balance"], body["price"]) == (2, 3)
    error = error_from_response(as_httpx(refused))
    assert isinstance(error, BudgetExhausted)
    assert (error.balance, error.price, error.code) == (2.0, 3.0, "budget-exhausted")
    assert len(list(providers.task_repository()._tasks.stream())) == 1


def test_over_the_rate_is_a_429_with_retry_after_and_the_draft_headers(
    configure: Callable[..., None], api_key: Callable[[str], str]
) -> None:
    key = api_key("acme")
    # One submit per 10 s. The slots are whole 10 s of the clock (shared/flow/gcra.py): a
    # second submit just after a boundary holds the next slot and is rightly admitted, so
    # the first goes in the first half of a slot and the second well inside the same one.
    providers.flow_config().set_limit("acme", ALL_TYPES, LimitSpec(rate=0.1, burst=1))
    client = function_client("submit_task")
    phase = time.time() % 10.0
    if phase > 5.0:
        time.sleep(10.0 - phase)
    accepted = client.post("/tasks", json=ECHO, headers=auth(key))
    assert accepted.status_code == 202
    assert POLICY.match(accepted.headers["RateLimit-Policy"])
    assert accepted.headers["RateLimit-Policy"] == '"tenant";q=1;w=10;aia-burst=1'
    assert SERVICE_LIMIT.match(accepted.headers["RateLimit"])
    refused = client.post("/tasks", json=ECHO, headers=auth(key))
    body = assert_problem(refused, 429)
    assert body["type"] == "https://aia.dev/problems/rate-limited"
    assert body["violated-policies"] == ["tenant"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 10
    assert body["retry_after"] == retry_after
    assert refused.headers["RateLimit-Policy"] == accepted.headers["RateLimit-Policy"]
    assert refused.headers["RateLimit"] == f'"tenant";r=0;t={retry_after}'
    error = error_from_response(as_httpx(refused))
    assert isinstance(error, RateLimited)
    assert error.retry_after == float(retry_after)
    # Another tenant is not limited by it, and gets no RateLimit fields.
    other = client.post("/tasks", json=ECHO, headers=auth(api_key("other")))
    assert other.status_code == 202
    assert "RateLimit" not in other.headers
    # GET /usage shows the tenant its limits (max_running too, once operators set one).
    providers.flow_config().set_max_running("acme", 3)
    shown = function_client("usage").get("/usage", headers=auth(key)).get_json()
    assert shown["limits"] == {"rate": {"*": {"rate": 0.1, "burst": 1}}, "max_running": 3}


def test_usage_shows_balance_reservations_and_a_paged_ledger(
    configure: Callable[..., None], api_key: Callable[[str], str]
) -> None:
    key = api_key("acme")
    providers.budget_bank().grant("acme", 10, reason="welcome")
    submit = function_client("submit_task")
    for _ in range(3):
        assert submit.post("/tasks", json=ECHO, headers=auth(key)).status_code == 202
    usage = function_client("usage")
    shown = usage.get("/usage", headers=auth(key))
    assert shown.status_code == 200
    body = shown.get_json()
    assert (body["budgeted"], body["balance"], body["reserved"]) == (True, 7, 3)
    assert body["period"]["spent"] == 0
    assert re.fullmatch(r"\d{4}-\d{2}", body["period"]["id"])
    seen: list[dict[str, Any]] = []
    token = None
    for _ in range(5):
        query = {"limit": "2", **({"page_token": token} if token else {})}
        page = usage.get("/usage/ledger", query_string=query, headers=auth(key))
        assert page.status_code == 200
        seen += page.get_json()["entries"]
        token = page.get_json().get("next_page_token")
        if token is None:
            break
    assert sorted(e["kind"] for e in seen) == ["grant", "reserve", "reserve", "reserve"]
    assert all(e.get("task_id") for e in seen if e["kind"] == "reserve")
    assert [e["at"] for e in seen] == sorted((e["at"] for e in seen), reverse=True)
    only = usage.get("/usage/ledger?kind=grant", headers=auth(key)).get_json()["entries"]
    assert [(e["kind"], e["amount"], e["reason"]) for e in only] == [("grant", 10, "welcome")]
    # Another tenant sees nothing of acme's.
    assert usage.get("/usage", headers=auth(api_key("other"))).get_json() == {
        "tenant_id": "other",
        "budgeted": False,
        "limits": {"rate": {}},
    }
    other_page = usage.get("/usage/ledger", headers=auth(api_key("other"))).get_json()
    assert other_page == {"entries": []}


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("page_token=nope", 400, "page_token"),
        ("kind=bribe", 422, "kind"),
        ("limit=0", 422, "limit"),
        ("limit=x", 422, "limit"),
        ("colour=red", 422, "colour"),
    ],
)
def test_usage_ledger_refuses_bad_parameters(
    api_key: Callable[[str], str], query: str, status: int, field: str
) -> None:
    response = function_client("usage").get(f"/usage/ledger?{query}", headers=auth(api_key("acme")))
    assert_problem(response, status, field)


def test_usage_needs_a_key_and_serves_only_its_routes(api_key: Callable[[str], str]) -> None:
    client = function_client("usage")
    assert_problem(client.get("/usage"), 401)
    key = auth(api_key("acme"))
    missing = assert_problem(client.get("/usage/nope", headers=key), 404)
    assert "/usage/nope" in missing["detail"]
    assert_serves_only(client, path="/usage", unknown="/nowhere", allow="GET, HEAD")


def test_a_ledger_page_token_of_another_tenant_is_refused(api_key: Callable[[str], str]) -> None:
    from shared.flow.ledger import encode_token

    providers.budget_bank().grant("acme", 1)
    forged = encode_token(datetime.now(UTC), "acme:grant:x")
    response = function_client("usage").get(
        f"/usage/ledger?page_token={forged}", headers=auth(api_key("other"))
    )
    assert_problem(response, 400, "page_token")


def test_metrics_count_tokens_by_tenant_and_type_and_refusals_by_reason(
    configure: Callable[..., None], api_key: Callable[[str], str]
) -> None:
    key = api_key("acme")
    providers.budget_bank().grant("acme", 2)
    submit = function_client("submit_task")
    for _ in range(3):
        submit.post("/tasks", json=ECHO, headers=auth(key))
    scrape = function_client("metrics").get("/metrics")
    assert scrape.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scrape.get_data(as_text=True))
        for s in family.samples
    }
    assert samples[("aia_tokens_reserved_total", (("tenant", "acme"), ("type", "echo")))] == 2
    assert (
        samples[("aia_admissions_refused_total", (("reason", "budget"), ("tenant", "acme")))] == 1
    )
    as_json = function_client("metrics").get("/metrics", headers={"Accept": "application/json"})
    assert as_json.get_json()["aia_tokens_reserved_total"] == {"acme": {"echo": 2}}
