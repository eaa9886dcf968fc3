"""The served document against the code: every route's function, called as deployed.

Each route in shared/api/routes.py is requested from its own function through
`create_app`, with a key and without; the answer's status must be one the
document declares for that operation, and its body and headers must match the
document's schema for that status and media type. Wrong methods and unknown
paths must give the document's 405 (with the path's full Allow) and 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema_rs
import pytest

from shared import providers
from shared.api import routes
from shared.api.openapi import build
from shared.tasks.registry import builtin_registry

from .conftest import function_client

pytestmark = pytest.mark.integration

METRICS_TOKEN = "operators-only-token"


@dataclass(frozen=True)
class Call:
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _submitted(key: str) -> str:
    response = function_client("submit_task").post(
        "/tasks", json={"type": "echo", "payload": {"n": 1}}, headers=_auth(key)
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["task_id"])


HOURLY = {"cron": "0 * * * *", "timezone": "Europe/Paris", "task": {"type": "echo", "payload": {}}}


def _schedule(key: str, *, paused: bool = False) -> str:
    client = function_client("schedules")
    response = client.post("/schedules", json=HOURLY, headers=_auth(key))
    assert response.status_code == 201, response.get_data(as_text=True)
    schedule_id = str(response.get_json()["schedule_id"])
    if paused:
        assert client.post(f"/schedules/{schedule_id}:pause", headers=_auth(key)).status_code == 200
    return schedule_id


# A public IP literal passes the egress rules without DNS (as deployed: no loopback).
WEBHOOK = {"url": "https://93.184.216.34/hooks/aia", "events": ["task.succeeded"]}


def _webhook(key: str) -> str:
    response = function_client("webhooks").post("/webhooks", json=WEBHOOK, headers=_auth(key))
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def _failed_delivery(key: str) -> str:
    """A delivery to a fresh webhook whose every attempt failed: replayable."""
    from shared import queries
    from shared.clients import firestore_client
    from shared.webhooks.models import Attempt, Delivery, DeliveryStatus
    from shared.webhooks.store import delivery_document

    endpoint_id = _webhook(key)
    tenant_id = providers.api_keys().authenticate(key)
    now = datetime.now(UTC)
    delivery = Delivery(
        delivery_id="dl_" + "1" * 32,
        tenant_id=tenant_id,
        endpoint_id=endpoint_id,
        event_id="msg_" + "2" * 32,
        event_type="task.succeeded",
        task_id="3" * 32,
        status=DeliveryStatus.FAILED,
        attempt_count=1,
        attempts=[Attempt(at=now, outcome="http-error", response_code=500, latency_ms=12)],
        reason="every scheduled attempt failed",
        created_at=now,
        updated_at=now,
    )
    document = delivery_document(delivery, now + timedelta(days=1))
    deliveries = firestore_client().collection(queries.WEBHOOK_DELIVERIES)
    deliveries.document(delivery.delivery_id).set(document)
    return delivery.delivery_id


# A diamond of echo nodes: b and c depend on a, d on both.
DIAMOND = {
    "nodes": {
        "a": {"type": "echo", "payload": {"n": 1}},
        "b": {"type": "echo", "payload": {}, "depends_on": ["a"]},
        "c": {"type": "echo", "payload": {}, "depends_on": ["a"]},
        "d": {"type": "echo", "payload": {}, "depends_on": ["b", "c"]},
    },
    "failure_policy": "continue",
}


def _workflow(key: str) -> str:
    response = function_client("workflows").post("/workflows", json=DIAMOND, headers=_auth(key))
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["workflow_id"])


# One valid request per operation: a new route needs one here (a test says so).
EXAMPLES: dict[str, Callable[[str], Call]] = {
    "submitTask": lambda key: Call("/tasks", {"type": "sleep", "payload": {"seconds": 0}}),
    "submitTaskAlias": lambda key: Call(
        "/tasks/submit", {"type": "echo", "payload": {}}, {"Idempotency-Key": "k-1"}
    ),
    "listTasks": lambda key: Call("/tasks?status=queued&limit=5"),
    "countTasks": lambda key: Call("/tasks/counts"),
    "getTask": lambda key: Call(f"/tasks/{_submitted(key)}"),
    # A queued task: replay answers it as it is (idempotent).
    "replayTask": lambda key: Call(f"/tasks/{_submitted(key)}:replay"),
    # A queued task: cancelled at once.
    "cancelTask": lambda key: Call(f"/tasks/{_submitted(key)}:cancel"),
    "createSchedule": lambda key: Call("/schedules", HOURLY),
    "listSchedules": lambda key: Call("/schedules?limit=5"),
    "getSchedule": lambda key: Call(f"/schedules/{_schedule(key)}"),
    "pauseSchedule": lambda key: Call(f"/schedules/{_schedule(key)}:pause"),
    "resumeSchedule": lambda key: Call(f"/schedules/{_schedule(key, paused=True)}:resume"),
    "deleteSchedule": lambda key: Call(f"/schedules/{_schedule(key)}"),
    "createWebhook": lambda key: Call("/webhooks", WEBHOOK),
    "listWebhooks": lambda key: Call("/webhooks?limit=5"),
    "createSigningKey": lambda key: Call("/webhooks/signing-key", {"signature": "v1a"}),
    "getWebhook": lambda key: Call(f"/webhooks/{_webhook(key)}"),
    "deleteWebhook": lambda key: Call(f"/webhooks/{_webhook(key)}"),
    "rotateWebhookSecret": lambda key: Call(f"/webhooks/{_webhook(key)}:rotate-secret"),
    "listWebhookDeliveries": lambda key: Call(f"/webhooks/{_webhook(key)}/deliveries"),
    "replayWebhookDelivery": lambda key: Call(
        f"/webhooks/deliveries/{_failed_delivery(key)}:replay"
    ),
    "getUsage": lambda key: Call("/usage"),
    "listLedger": lambda key: Call("/usage/ledger?kind=grant&limit=5"),
    "createWorkflow": lambda key: Call("/workflows", DIAMOND, {"Idempotency-Key": "wf-1"}),
    "listWorkflows": lambda key: Call("/workflows?limit=5"),
    "getWorkflow": lambda key: Call(f"/workflows/{_workflow(key)}"),
    # Nothing has run (no worker here): every node is cancelled at once.
    "cancelWorkflow": lambda key: Call(f"/workflows/{_workflow(key)}:cancel"),
    "health": lambda key: Call("/health"),
    "healthAtRoot": lambda key: Call("/"),
    "metrics": lambda key: Call("/metrics", headers={"Accept": "application/json"}),
    "openapi": lambda key: Call("/openapi.json"),
    "dashboard": lambda key: Call("/dashboard"),
    "dashboardAsset": lambda key: Call("/dashboard/app.js"),
}

ROUTES = {r.operation_id: r for r in routes.ROUTES}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # diagnostic on, as in the test environment; the served copy is compared below.
    return build(builtin_registry(), diagnostic=True, version="dev")


def _response_spec(document: dict[str, Any], route: routes.Route, status: int) -> dict[str, Any]:
    template = route if route.documented else _documented_twin(route)
    operation = document["paths"][template.path][template.method.lower()]
    spec: dict[str, Any] = operation["responses"][str(status)]
    return spec


def _documented_twin(route: routes.Route) -> routes.Route:
    # A hidden alias answers exactly as the documented route with the same answers.
    return next(r for r in routes.ROUTES if r.documented and r.answers == route.answers)


def _validate(document: dict[str, Any], spec: dict[str, Any], response: Any) -> None:
    """The answer's headers and body against one response object of the document."""
    for name, header in spec.get("headers", {}).items():
        value = response.headers.get(name)
        if header.get("required"):
            assert value is not None, f"missing {name}"
        if value is not None:
            assert jsonschema_rs.is_valid(header["schema"], value), (name, value)
    content = spec.get("content", {})
    if not content:
        return
    media = response.content_type.split(";")[0].strip()
    declared = {m.split(";")[0].strip(): m for m in content}
    assert media in declared, f"{media} not in {sorted(declared)}"
    schema = content[declared[media]]["schema"]
    if media.endswith("json"):
        body = json.loads(response.get_data())
        root = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": document["components"],
            "allOf": [schema],
        }
        errors = [e.message for e in jsonschema_rs.validator_for(root).iter_errors(body)]
        assert not errors, (errors, body)


def _call(route: routes.Route, call: Call, headers: dict[str, str]) -> Any:
    client = function_client(route.function)
    return client.open(
        call.path,
        method=route.method,
        json=call.json,
        headers={**call.headers, **headers},
    )


def test_every_route_has_an_example() -> None:
    assert set(EXAMPLES) == set(ROUTES)


@pytest.mark.parametrize("operation", sorted(ROUTES))
def test_route_answers_as_declared_with_credentials(
    operation: str, api_key: Callable[[str], str], document: dict[str, Any]
) -> None:
    route = ROUTES[operation]
    key = api_key("acme")
    call = EXAMPLES[operation](key)
    credentials = _auth(key) if route.auth is routes.Auth.API_KEY else {}
    response = _call(route, call, credentials)
    assert response.status_code in route.statuses, response.get_data(as_text=True)
    assert 200 <= response.status_code < 300, response.get_data(as_text=True)
    _validate(document, _response_spec(document, route, response.status_code), response)


def test_delayed_submits_and_their_views_answer_as_declared(
    api_key: Callable[[str], str], document: dict[str, Any]
) -> None:
    key = api_key("acme")
    submit = ROUTES["submitTask"]
    in_an_hour = datetime.now(UTC).astimezone(timezone(timedelta(hours=1))) + timedelta(hours=1)
    for start in ({"delay_s": 600}, {"run_at": in_an_hour.isoformat()}):
        call = Call("/tasks", {"type": "echo", "payload": {}, **start})
        response = _call(submit, call, _auth(key))
        assert response.status_code == 202, response.get_data(as_text=True)
        assert response.get_json()["status"] == "scheduled"
        _validate(document, _response_spec(document, submit, 202), response)
        task_id = response.get_json()["task_id"]
        view = _call(ROUTES["getTask"], Call(f"/tasks/{task_id}"), _auth(key))
        assert view.get_json()["status"] == "scheduled"
        assert "run_at" in view.get_json()
        _validate(document, _response_spec(document, ROUTES["getTask"], 200), view)
    both = {"type": "echo", "payload": {}, "delay_s": 5, "run_at": "2030-01-01T00:00:00Z"}
    schema = document["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]
    root = {"components": document["components"], "allOf": [schema["schema"]]}
    assert not jsonschema_rs.validator_for(root).is_valid(both), "the document allows both"
    assert jsonschema_rs.validator_for(root).is_valid({**both, "delay_s": None})


@pytest.mark.parametrize("operation", sorted(ROUTES))
def test_route_answers_as_declared_without_credentials(
    operation: str, api_key: Callable[[str], str], document: dict[str, Any]
) -> None:
    route = ROUTES[operation]
    call = EXAMPLES[operation](api_key("acme"))
    response = _call(route, call, {})
    assert response.status_code in route.statuses, response.get_data(as_text=True)
    if route.auth is routes.Auth.API_KEY:
        assert response.status_code == 401
    _validate(document, _response_spec(document, route, response.status_code), response)


@pytest.mark.parametrize(
    "operation", sorted(o for o, r in ROUTES.items() if r.auth is routes.Auth.OPERATOR)
)
def test_operator_routes_need_the_metrics_token_once_one_is_set(
    operation: str, configure: Callable[..., None], document: dict[str, Any]
) -> None:
    configure(AIA_METRICS_TOKEN=METRICS_TOKEN)
    route = ROUTES[operation]
    call = EXAMPLES[operation]("")
    for credentials in ({}, _auth("aia_not_the_token")):
        refused = _call(route, call, credentials)
        assert refused.status_code == 401, refused.get_data(as_text=True)
        _validate(document, _response_spec(document, route, 401), refused)
    allowed = _call(route, call, _auth(METRICS_TOKEN))
    assert allowed.status_code == 200, allowed.get_data(as_text=True)
    if route.path in ("/health", "/"):
        live = function_client(route.function).get(f"{route.path}?probe=live")
        assert live.status_code == 200, "the liveness probe needs no token"


def _paths() -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for route in routes.ROUTES:
        seen.setdefault(route.example_path(), route.path)
    return sorted(seen.items())


@pytest.mark.parametrize(("path", "template"), _paths())
def test_other_methods_are_405_with_the_paths_methods(
    path: str, template: str, api_key: Callable[[str], str], document: dict[str, Any]
) -> None:
    key = api_key("acme")
    allowed = routes.allowed_methods(path)
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        if method in allowed:
            continue
        function = routes.route_for(method, path)
        assert function is not None, (method, path)
        response = function_client(function).open(path, method=method, headers=_auth(key))
        assert response.status_code == 405, (method, path, response.get_data(as_text=True))
        listed = {m.strip() for m in response.headers["Allow"].split(",")} - {"HEAD"}
        assert listed == set(allowed), (method, path, response.headers["Allow"])
        _validate(document, document["components"]["responses"]["MethodNotAllowed"], response)


@pytest.mark.parametrize("function", sorted({r.function for r in routes.ROUTES}))
def test_unknown_paths_are_404(
    function: str, api_key: Callable[[str], str], document: dict[str, Any]
) -> None:
    for path in ("/no/such/route", "/tasks/a%0Ab", "/webhooks/a%0Ab/deliveries"):
        # A newline never matches functions-framework's own rule: its refusal too is ours.
        response = function_client(function).get(path, headers=_auth(api_key("acme")))
        assert response.status_code == 404, response.get_data(as_text=True)
        _validate(document, document["components"]["responses"]["NotFound"], response)


def test_served_document_is_the_generated_one(configure: Callable[..., None]) -> None:
    configure(AIA_VERSION="1.2.3")
    served = function_client("openapi").get("/openapi.json")
    assert served.status_code == 200
    assert served.mimetype == "application/json"
    expected = build(
        builtin_registry(), diagnostic=True, version="1.2.3", server_url="https://aia.example"
    )
    assert served.get_json() == expected
    configure(AIA_DIAGNOSTIC_TASKS="false")
    providers.reset()
    mapping = function_client("openapi").get("/openapi.json").get_json()["components"]["schemas"]
    assert "fail" not in mapping["TaskRequest"]["discriminator"]["mapping"]
    assert "TaskRequest.fail" not in mapping


def test_dashboard_headers_forbid_inline_script_and_sniffing() -> None:
    client = function_client("dashboard")
    for path in ("/dashboard", "/dashboard/app.js", "/dashboard/style.css"):
        response = client.get(path)
        assert response.status_code == 200
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    page = client.get("/dashboard").get_data(as_text=True)
    # Scripts only from files: no inline <script> body, no inline handlers.
    assert '<script type="module" src="/dashboard/app.js"></script>' in page
    assert page.count("<script") == 1
    assert " on" not in page.replace("\n", " ").split("<body", 1)[1].split(">", 1)[0]
    assert client.get("/dashboard/../shared/config.py").status_code == 404


def test_the_dashboard_names_the_configured_trace_console_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.config import get_settings

    console = 'https://console.example/traces?tid={trace_id}&x="><b>'
    monkeypatch.setenv("AIA_TRACE_CONSOLE_URL", console)
    get_settings.cache_clear()
    try:
        page = function_client("dashboard").get("/dashboard").get_data(as_text=True)
    finally:
        monkeypatch.delenv("AIA_TRACE_CONSOLE_URL")
        get_settings.cache_clear()
    meta = (
        '<meta name="aia-trace-url" '
        'content="https://console.example/traces?tid={trace_id}&amp;x=&quot;&gt;&lt;b&gt;">'
    )
    assert meta in page
    assert "<b>" not in page
    unset = function_client("dashboard").get("/dashboard").get_data(as_text=True)
    assert '<meta name="aia-trace-url" content="">' in unset
