"""The route table and the OpenAPI document generated from it, without a running function."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from pydantic import BaseModel, ConfigDict, Field

from shared import errors
from shared.api import routes
from shared.api.dispatch import route_of
from shared.api.openapi import INLINE_SCHEMAS, build, resolve
from shared.tasks.registry import TaskRegistry, builtin_registry
from tools.package import discover_functions, signature_type
from tools.tfschema.venvs import REPO_ROOT

# Internal functions: invoked by Pub/Sub and Cloud Scheduler, never through the public URL.
INTERNAL = frozenset({"process_task", "redispatch", "schedule_tick", "deliver_webhooks"})


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build(builtin_registry(), diagnostic=True, version="test", server_url="https://aia.test")


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator for `schema` whose #/components/... refs resolve inside `document`."""
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
        "allOf": [schema],
    }
    return jsonschema_rs.validator_for(root)


def _error_codes() -> dict[str, int]:
    def walk(cls: type[errors.AIAError]) -> Iterator[type[errors.AIAError]]:
        yield cls
        for sub in cls.__subclasses__():
            yield from walk(sub)

    return {cls.code: cls.status for cls in walk(errors.AIAError)}


# The table itself


def test_every_route_is_declared_once() -> None:
    keys = [(r.method, r.path) for r in routes.ROUTES]
    assert len(keys) == len(set(keys))
    ids = [r.operation_id for r in routes.ROUTES]
    assert len(ids) == len(set(ids))


def test_every_public_http_function_serves_a_route_and_every_route_has_a_function() -> None:
    folders = set(discover_functions(REPO_ROOT))
    served = {r.function for r in routes.ROUTES}
    assert served <= folders, f"routes served by no functions/<name>: {served - folders}"
    http = {
        name
        for name in folders
        if signature_type(REPO_ROOT / "functions" / name / "main.py", name) == "http"
    }
    assert http - INTERNAL == served, "a public HTTP function without a route, or the reverse"


def test_problem_codes_are_the_errors_codes_at_their_status() -> None:
    codes = _error_codes()
    answers = [a for r in routes.ROUTES for a in r.answers]
    answers += [routes.NOT_FOUND, routes.METHOD_NOT_ALLOWED]
    for answer in answers:
        for code in answer.problems:
            assert code in codes, f"{code!r} is no shared.errors code"
            assert codes[code] == answer.status, (code, answer.status)


def test_auth_and_401_go_together() -> None:
    for route in routes.ROUTES:
        needs_credentials = route.auth is not routes.Auth.NONE
        assert (401 in route.statuses) == needs_credentials, route.operation_id
        if needs_credentials:
            assert route.answer(401) in (routes.API_KEY_401, routes.OPERATOR_401)


def test_every_route_declares_a_success_and_its_faults() -> None:
    for route in routes.ROUTES:
        assert any(200 <= s < 300 for s in route.statuses), route.operation_id
        assert {500, 503} <= route.statuses, route.operation_id
        for answer in route.answers:
            assert set(answer.headers) <= set(routes.HEADERS), answer
            if answer.status >= 400:
                assert answer.problems, (route.operation_id, answer.status)
            for content in answer.content:
                if ":" in content.schema:
                    assert issubclass(resolve(content.schema), BaseModel)
                else:
                    assert content.schema in INLINE_SCHEMAS


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("POST", "/tasks", "submitTask"),
        ("POST", "/tasks/submit", "submitTaskAlias"),
        ("GET", "/tasks", "listTasks"),
        ("GET", "/tasks/", "listTasks"),
        ("GET", "/tasks/counts", "countTasks"),
        ("GET", "/tasks/" + "a" * 32, "getTask"),
        ("POST", "/tasks/" + "a" * 32 + ":replay", "replayTask"),
        ("GET", "/tasks/" + "a" * 32 + ":replay", None),
        ("GET", "/tasks/a/b", None),
        ("GET", "/dashboard/app.js", "dashboardAsset"),
        ("GET", "/", "healthAtRoot"),
        ("DELETE", "/tasks", None),
    ],
)
def test_find_picks_the_most_literal_route(method: str, path: str, operation: str | None) -> None:
    found = routes.find(method, path)
    assert (found.operation_id if found else None) == operation


def test_a_list_filters_by_any_task_status() -> None:
    from shared.tasks.models import TaskStatus

    (status,) = (p for p in routes.find("GET", "/tasks").params if p.name == "status")  # type: ignore[union-attr]
    assert status.schema["enum"] == [s.value for s in TaskStatus]


def test_schedule_tick_is_internal_and_the_schedules_api_is_public() -> None:
    functions = {r.function for r in routes.ROUTES}
    assert "schedules" in functions
    assert "schedule_tick" not in functions
    assert routes.route_for("POST", "/schedules") == "schedules"
    assert routes.route_for("DELETE", "/schedules/" + "a" * 32) == "schedules"
    found = routes.find("POST", "/schedules/" + "a" * 32 + ":resume")
    assert found is not None
    assert found.operation_id == "resumeSchedule"
    assert routes.allowed_methods("/schedules/" + "a" * 32) == ("DELETE", "GET")


def test_allowed_methods_are_every_method_of_the_path() -> None:
    assert routes.allowed_methods("/tasks") == ("GET", "POST")
    assert routes.allowed_methods("/tasks/counts") == ("GET",)
    assert routes.allowed_methods("/tasks/abc:replay") == ("POST",)
    assert routes.allowed_methods("/nowhere") == ()


def test_routing_rules_send_every_route_to_its_function() -> None:
    for route in routes.ROUTES:
        assert routes.route_for(route.method, route.example_path()) == route.function, route
    # A method nobody serves reaches the function serving the path's GET, which says 405.
    assert routes.route_for("DELETE", "/tasks") == "task_status"
    assert routes.route_for("PUT", "/openapi.json") == "openapi"
    assert routes.route_for("GET", "/nowhere") is None


def test_one_method_served_by_two_functions_is_refused() -> None:
    extra = routes.Route(
        "GET", "/tasks", "metrics", operation_id="x", summary="x", auth=routes.Auth.NONE, answers=()
    )
    rules = routes.routing_rules.__wrapped__
    original = routes.ROUTES
    routes.ROUTES = (*original, extra)
    try:
        with pytest.raises(ValueError, match="several functions"):
            rules()
    finally:
        routes.ROUTES = original


# The document


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()
    # Every reference points at a component that exists.
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in document["components"]["schemas"], name


def test_document_has_every_documented_route_and_no_other(document: dict[str, Any]) -> None:
    declared = {(r.path, r.method.lower()) for r in routes.ROUTES if r.documented}
    served = {(p, m) for p, ops in document["paths"].items() for m in ops}
    assert served == declared
    for route in routes.ROUTES:
        if not route.documented:
            continue
        operation = document["paths"][route.path][route.method.lower()]
        assert operation["operationId"] == route.operation_id
        assert set(operation["responses"]) == {str(s) for s in route.statuses}
        params = {(p["name"], p["in"]) for p in operation.get("parameters", [])}
        assert params == {(p.name, p.location) for p in route.params}
        template = {part.split("}")[0] for part in route.path.split("{")[1:]}
        assert template == {p.name for p in route.params if p.location == "path"}


def test_security_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    ops = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}
    assert ops["submitTask"]["security"] == [{"apiKey": []}]
    assert ops["metrics"]["security"] == [{"metricsToken": []}, {}]
    assert ops["openapi"]["security"] == []


def test_problem_answers_name_their_types(document: dict[str, Any]) -> None:
    answer = document["paths"]["/tasks"]["post"]["responses"]["422"]
    schema = answer["content"]["application/problem+json"]["schema"]
    check = validator(document, schema)
    body = {
        "type": "https://aia.dev/problems/validation",
        "title": "Validation failed",
        "status": 422,
        "detail": "payload.seconds: Input should be less than or equal to 30",
        "field": "payload.seconds",
        "errors": [{"field": "payload.seconds", "message": "too big"}],
    }
    assert check.is_valid(body)
    assert not check.is_valid({**body, "type": "https://aia.dev/problems/not-found"})
    assert not check.is_valid({**body, "status": 400})
    assert check.is_valid(errors.ValidationFailed("x", field="f").problem() | {"instance": "/t"})


def test_headers_are_described_where_they_occur(document: dict[str, Any]) -> None:
    submit = document["paths"]["/tasks"]["post"]
    assert submit["parameters"][0]["name"] == "Idempotency-Key"
    accepted = submit["responses"]["202"]["headers"]
    assert set(accepted) == {"Location", "Idempotent-Replayed", "RateLimit-Policy", "RateLimit"}
    assert accepted["Location"]["required"] is True
    assert set(submit["responses"]["401"]["headers"]) == {"WWW-Authenticate"}
    assert set(submit["responses"]["503"]["headers"]) == {"Retry-After"}
    limited = set(submit["responses"]["429"]["headers"])
    assert limited == {"Retry-After", "RateLimit-Policy", "RateLimit"}
    not_allowed = document["components"]["responses"]["MethodNotAllowed"]
    assert not_allowed["headers"]["Allow"]["required"] is True


SAMPLES: dict[str, dict[str, Any]] = {
    "echo": {"anything": [1, "two", {"three": None}]},
    "sleep": {"seconds": 0.5},
    "analytics.summary": {"values": [1, 2.5, -3]},
    "analytics.chunk": {"values": [4.0, 5.5]},
    "analytics.merge": {},
    "fail": {"times": 1, "retryable": False},
    "probe": {"marker": "m-1"},
    "fan": {"children": 3},
    "fan.total": {},
    "inputs": {"name": "a"},
}


def test_submit_body_is_one_schema_per_registered_type(document: dict[str, Any]) -> None:
    registry = builtin_registry()
    schemas = document["components"]["schemas"]
    union = schemas["TaskRequest"]
    assert union["discriminator"]["propertyName"] == "type"
    assert sorted(union["discriminator"]["mapping"]) == registry.names()
    assert set(SAMPLES) == set(registry.names()), "a sample payload per built-in type"
    check = validator(document, {"$ref": "#/components/schemas/TaskRequest"})
    for name, payload in SAMPLES.items():
        # What the server accepts, the document accepts, and the reverse for these.
        registry.parse_payload(registry.get(name), payload)
        assert check.is_valid({"type": name, "payload": payload, "max_attempts": 2}), name
    assert not check.is_valid({"type": "nope", "payload": {}})
    assert not check.is_valid({"type": "sleep", "payload": {"seconds": 31}})
    assert not check.is_valid({"type": "fail", "payload": {"times": 1, "extra": 1}})
    assert not check.is_valid({"type": "echo", "payload": {}, "max_attempts": 11})
    assert not check.is_valid({"type": "echo", "payload": {}, "other": 1})
    assert not check.is_valid({"type": "echo"})


def test_diagnostic_types_follow_the_setting() -> None:
    off = build(builtin_registry(), diagnostic=False, version="test")
    mapping = off["components"]["schemas"]["TaskRequest"]["discriminator"]["mapping"]
    assert sorted(mapping) == builtin_registry().names(include_diagnostic=False)
    assert "fail" not in mapping
    assert "servers" not in off


class ResizePayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    width: int = Field(ge=1, le=4096)


def test_a_newly_registered_type_is_described_by_its_own_model() -> None:
    registry = TaskRegistry()
    registry.register("images.resize", ResizePayload)(lambda payload, ctx: {})
    document = build(registry, diagnostic=False, version="test")
    schemas = document["components"]["schemas"]
    assert schemas["ResizePayload"]["properties"]["width"]["maximum"] == 4096
    check = validator(document, {"$ref": "#/components/schemas/TaskRequest"})
    good = {"type": "images.resize", "payload": {"url": "u", "width": 10}}
    assert check.is_valid(good)
    assert not check.is_valid({**good, "payload": {"url": "u", "width": 0}})


def test_answer_models_describe_what_the_code_builds(document: dict[str, Any]) -> None:
    from shared.operations.health import check_health
    from shared.tasks.models import TaskPage, TaskView

    health = validator(document, {"$ref": "#/components/schemas/Health"})
    body, _ = check_health(probe="live", version="v")
    assert health.is_valid(body)
    down, _ = check_health(probe=None, checks={"firestore": _broken}, version="v")
    assert health.is_valid(down), down
    view = validator(document, {"$ref": "#/components/schemas/TaskView"})
    sample = TaskView.model_validate(
        {
            "task_id": "a" * 32,
            "type": "echo",
            "status": "failed",
            "attempts": 1,
            "max_attempts": 1,
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": None,
            "finished_at": None,
            "error": {"code": "x", "message": "y"},
        }
    )
    assert view.is_valid(sample.to_json())
    page = validator(document, {"$ref": "#/components/schemas/TaskPage"})
    # As task_status writes a page: the views as to_json() writes them.
    listed = TaskPage(tasks=[sample], next_page_token="t")
    answer = listed.model_dump(mode="json", exclude_none=True) | {"tasks": [sample.to_json()]}
    assert page.is_valid(answer)


def _broken(timeout_s: float) -> None:
    raise OSError("down")


@dataclass(frozen=True)
class _Request:
    method: str
    path: str


@pytest.mark.parametrize(
    ("function", "method", "path", "outcome"),
    [
        ("task_status", "GET", "/tasks", "listTasks"),
        ("task_status", "HEAD", "/tasks/counts", "countTasks"),
        ("openapi", "GET", "/", "openapi"),
        ("submit_task", "POST", "/tasks/" + "a" * 32 + ":replay", "replayTask"),
        # Another function's method at a known path: 405 naming what the table serves.
        ("task_status", "PUT", "/tasks", "405 GET, HEAD, POST"),
        ("submit_task", "POST", "/tasks/" + "a" * 32, "405 GET, HEAD"),
        ("task_status", "GET", "/tasks/" + "a" * 32 + ":replay", "405 POST"),
        # This function's own URL, asked for what another function serves.
        ("task_status", "POST", "/tasks", "405 GET, HEAD"),
        ("dashboard", "GET", "/tasks", "404"),
        ("dashboard", "GET", "/dashboard/a/b", "404"),
        ("health", "GET", "/nowhere", "404"),
    ],
)
def test_route_of_answers_the_tables_404_and_405(
    function: str, method: str, path: str, outcome: str
) -> None:
    request = _Request(method, path)
    if outcome.startswith("405"):
        with pytest.raises(errors.MethodNotAllowed) as refused:
            route_of(request, function, root="/openapi.json")
        assert outcome == f"405 {', '.join(sorted(refused.value.allowed))}"
    elif outcome == "404":
        with pytest.raises(errors.NotFound):
            route_of(request, function, root="/openapi.json")
    else:
        assert route_of(request, function, root="/openapi.json").operation_id == outcome


def test_dashboard_asset_names_are_the_files_served() -> None:
    from shared.dashboard import ASSETS

    (param,) = next(r for r in routes.ROUTES if r.operation_id == "dashboardAsset").params
    assert sorted(param.schema["enum"]) == sorted(ASSETS)


def test_the_ledgers_page_sizes_are_the_documents() -> None:
    from shared.flow.ledger import DEFAULT_PAGE, MAX_PAGE

    route = routes.find("GET", "/usage/ledger")
    assert route is not None
    (limit,) = [p for p in route.params if p.name == "limit"]
    assert (limit.schema["maximum"], limit.schema["default"]) == (MAX_PAGE, DEFAULT_PAGE)
