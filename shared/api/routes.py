"""AIA's public HTTP surface as data: every route, the function serving it, what it answers.

The one place a route is added. Everything else derives from this table or is
checked against it: the dev gateway routes by `route_for`, the load balancer's
rules are compared with `routing_rules` (tests/infra), `shared.api.openapi`
turns the table into the served OpenAPI document, and the contract tests call
each route's function and hold its answers to the statuses declared here.

Pure data and `re` only: the gateway imports it. Models are named
"module:Class" and resolved by the generator alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

JSON = "application/json"
PROBLEM = "application/problem+json"
TEXT = "text/plain"
HTML = "text/html"
# prometheus_client's CONTENT_TYPE_LATEST, without importing it here.
PROMETHEUS = "text/plain; version=1.0.0; charset=utf-8"
PROBLEM_BASE = "https://aia.dev/problems/"

TASK_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "32 lowercase hex digits"}
SCHEDULE_ID = TASK_ID


class Auth(StrEnum):
    NONE = "none"
    # A tenant's API key: `Authorization: Bearer aia_<id>_<secret>`.
    API_KEY = "api_key"
    # The operators' metrics token, required only where one is configured (every deployment).
    OPERATOR = "operator"


@dataclass(frozen=True)
class Header:
    description: str
    schema: Mapping[str, Any]
    # Sent on every answer that lists it (the others only sometimes).
    required: bool = False


HEADERS: dict[str, Header] = {
    "Location": Header(
        "URL of the task's status, of the schedule created, or of the workflow's status",
        {"type": "string"},
        required=True,
    ),
    "Idempotent-Replayed": Header(
        "`true` when this is the stored answer to an earlier request with the same "
        "Idempotency-Key and body",
        {"type": "string", "enum": ["true"]},
    ),
    "Retry-After": Header(
        "Seconds to wait before retrying", {"type": "string", "pattern": "^[0-9]+$"}
    ),
    "WWW-Authenticate": Header(
        'The Bearer challenge (RFC 6750); `error="invalid_token"` when a credential was sent',
        {"type": "string", "pattern": "^Bearer "},
        required=True,
    ),
    "Allow": Header("The methods this path supports", {"type": "string"}, required=True),
    # draft-ietf-httpapi-ratelimit-headers: on a rate-limited tenant's submits, and its 429s.
    "RateLimit-Policy": Header(
        'The limits that apply, e.g. `"tenant";q=10;w=1`', {"type": "string"}
    ),
    "RateLimit": Header('What is left of each, e.g. `"tenant";r=9;t=0`', {"type": "string"}),
    "Content-Security-Policy": Header(
        "The page's policy: no inline script", {"type": "string"}, required=True
    ),
}


@dataclass(frozen=True)
class Param:
    name: str
    location: Literal["path", "query", "header"]
    description: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Content:
    media_type: str
    # "module:Class" of a pydantic model, or a key of shared.api.openapi.INLINE_SCHEMAS.
    schema: str


@dataclass(frozen=True)
class Answer:
    """One response status: its bodies, the headers it carries, its problem types."""

    status: int
    description: str
    content: tuple[Content, ...] = ()
    headers: tuple[str, ...] = ()
    # shared.errors codes: the answer may be problem+json of these types.
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # an OpenAPI path template: /tasks/{task_id}
    function: str  # functions/<name>/main.py serves it
    operation_id: str
    summary: str
    auth: Auth
    answers: tuple[Answer, ...]
    tag: str = "tasks"
    description: str = ""
    params: tuple[Param, ...] = ()
    body: str | None = None  # "module:Class" of the JSON request body
    # The body's `payload` is validated by the model of its `type`: one schema per type.
    body_by_task_type: bool = False
    # False: served and routed, but left out of the document (an alias, say).
    documented: bool = True

    @property
    def statuses(self) -> frozenset[int]:
        return frozenset(a.status for a in self.answers)

    def answer(self, status: int) -> Answer | None:
        return next((a for a in self.answers if a.status == status), None)

    def matches(self, path: str) -> bool:
        return _pattern(self.path).fullmatch(path) is not None

    def example_path(self, **values: str) -> str:
        """The template filled in: `values` by name, else a placeholder per parameter."""
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "0" * 32), self.path)


# Answers shared by many routes.


def unauthorized(what: str) -> Answer:
    return Answer(401, what, headers=("WWW-Authenticate",), problems=("unauthorized",))


API_KEY_401 = unauthorized("Missing, malformed, unknown or revoked API key")
BODY_400 = Answer(
    400, "The body is not JSON, or nests too deeply", problems=("bad-request", "nesting-too-deep")
)
BODY_415 = Answer(415, "The body is not application/json", problems=("unsupported-media-type",))
OPERATOR_401 = unauthorized("A metrics token is configured and was not given")
UNAVAILABLE = Answer(
    503,
    "A dependency failed transiently, or the function is not running: retry after Retry-After",
    headers=("Retry-After",),
    problems=("unavailable", "key-unavailable"),
)
INTERNAL = Answer(
    500,
    "A fault of the service (misconfiguration, stored data failing its integrity check)",
    problems=("internal", "configuration", "integrity"),
)
PUBLIC_503 = Answer(
    503, "The function is not running (behind the gateway): retry", problems=("unavailable",)
)
TASK_ID_PARAM = Param("task_id", "path", "The task's id, as submit answered it", TASK_ID, True)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    "Makes a retried submit safe for 24 h per tenant: the same key and body return the "
    "original answer with `Idempotent-Replayed: true`; the same key with another body is a 422",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
)
# shared.tasks.models.TaskStatus (a unit test keeps them equal): any of them filters a list.
TASK_STATUSES = ["scheduled", "queued", "running", "waiting", "succeeded", "failed", "cancelled"]
WORKFLOW_ID_PARAM = Param(
    "workflow_id", "path", "The workflow's id, as its creation answered it", TASK_ID, True
)

_SUBMIT_ANSWERS = (
    Answer(
        202,
        "Stored (encrypted) and queued, or `scheduled` until its `run_at` when a start "
        "time was given; `dispatch: deferred` when the publish is left to the redispatch sweep",
        (Content(JSON, "shared.api.models:TaskAccepted"),),
        headers=("Location", "Idempotent-Replayed", "RateLimit-Policy", "RateLimit"),
    ),
    BODY_400,
    API_KEY_401,
    Answer(
        402,
        "The tenant's token balance cannot cover the task's price (both in the body): "
        "nothing was stored",
        problems=("budget-exhausted",),
    ),
    Answer(413, "The body is over 1 MiB, or too large to store", problems=("payload-too-large",)),
    BODY_415,
    Answer(
        422,
        "Unknown type, invalid payload or field, or an Idempotency-Key reused with another body",
        problems=("validation", "idempotency-mismatch"),
    ),
    Answer(
        429,
        "Over the tenant's rate limit (or its type's): retry after Retry-After",
        headers=("Retry-After", "RateLimit-Policy", "RateLimit"),
        problems=("rate-limited",),
    ),
    INTERNAL,
    UNAVAILABLE,
)


def _submit(path: str, operation_id: str, summary: str, description: str = "") -> Route:
    return Route(
        "POST",
        path,
        "submit_task",
        operation_id=operation_id,
        summary=summary,
        description=description,
        auth=Auth.API_KEY,
        answers=_SUBMIT_ANSWERS,
        params=(IDEMPOTENCY_KEY,),
        body="shared.tasks.models:TaskRequest",
        body_by_task_type=True,
    )


# What every list answers: pages of `limit` with an opaque `page_token`.
_PAGE_PARAMS = (
    Param(
        "limit",
        "query",
        "Page size",
        {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    ),
    Param(
        "page_token",
        "query",
        "The `next_page_token` of the previous page",
        {"type": "string", "minLength": 1},
    ),
)
_PAGE_400 = Answer(
    400, "A page_token this API did not issue", problems=("bad-request", "nesting-too-deep")
)
_PAGE_422 = Answer(422, "An unknown query parameter or a bad value", problems=("validation",))


# Cron schedules (functions/schedules). schedule_tick, which fires them, is internal:
# Cloud Scheduler invokes it, like redispatch, and it has no public route.

SCHEDULE_ID_PARAM = Param(
    "schedule_id", "path", "The schedule's id, as create answered it", SCHEDULE_ID, True
)
_SCHEDULE_VIEW = (Content(JSON, "shared.scheduling.models:ScheduleView"),)
_NO_SCHEDULE = Answer(404, "No such schedule, or another tenant's", problems=("not-found",))


def _schedule_action(action: str, operation_id: str, summary: str, description: str) -> Route:
    return Route(
        "POST",
        f"/schedules/{{schedule_id}}:{action}",
        "schedules",
        operation_id=operation_id,
        summary=summary,
        description=description,
        auth=Auth.API_KEY,
        tag="schedules",
        params=(SCHEDULE_ID_PARAM,),
        answers=(
            Answer(200, "The schedule as it is now", _SCHEDULE_VIEW),
            API_KEY_401,
            _NO_SCHEDULE,
            *(
                (Answer(422, "The cron names no later slot", problems=("validation",)),)
                if action == "resume"
                else ()
            ),
            INTERNAL,
            UNAVAILABLE,
        ),
    )


_SCHEDULE_ROUTES = (
    Route(
        "POST",
        "/schedules",
        "schedules",
        operation_id="createSchedule",
        summary="Create a cron schedule: each slot submits the task",
        description=(
            "`task` is checked as a submit body would be (its `payload` against its `type`),"
            " and its payload is stored sealed. Each slot is submitted once, with the"
            " Idempotency-Key `schedule:<id>:<slot>`."
        ),
        auth=Auth.API_KEY,
        tag="schedules",
        body="shared.scheduling.models:ScheduleRequest",
        answers=(
            Answer(
                201,
                "Created: the schedule and its next 5 runs",
                _SCHEDULE_VIEW,
                headers=("Location",),
            ),
            BODY_400,
            API_KEY_401,
            Answer(
                413,
                "The body is over 1 MiB, or the task's payload too large to store",
                problems=("payload-too-large",),
            ),
            BODY_415,
            Answer(
                422,
                "No cron expression or time zone, an unknown task type, an invalid payload or"
                " field, or a start time in the task",
                problems=("validation",),
            ),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/schedules",
        "schedules",
        operation_id="listSchedules",
        summary="The caller's schedules, newest first, a page at a time",
        auth=Auth.API_KEY,
        tag="schedules",
        params=_PAGE_PARAMS,
        answers=(
            Answer(
                200,
                "A page of schedules",
                (Content(JSON, "shared.scheduling.models:SchedulePage"),),
            ),
            _PAGE_400,
            API_KEY_401,
            _PAGE_422,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/schedules/{schedule_id}",
        "schedules",
        operation_id="getSchedule",
        summary="A schedule: its cron, state, next runs, last run and counters",
        auth=Auth.API_KEY,
        tag="schedules",
        params=(SCHEDULE_ID_PARAM,),
        answers=(
            Answer(200, "The schedule", _SCHEDULE_VIEW),
            API_KEY_401,
            _NO_SCHEDULE,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    _schedule_action(
        "pause",
        "pauseSchedule",
        "Pause a schedule: no slot fires until it is resumed",
        "A slot held by `buffer_one` is dropped. Idempotent.",
    ),
    _schedule_action(
        "resume",
        "resumeSchedule",
        "Resume a paused schedule from its next slot after now",
        "Slots that passed while it was paused never fire. Idempotent.",
    ),
    Route(
        "DELETE",
        "/schedules/{schedule_id}",
        "schedules",
        operation_id="deleteSchedule",
        summary="Delete a schedule: no slot fires after this answers",
        description="Tasks it already submitted are not touched.",
        auth=Auth.API_KEY,
        tag="schedules",
        params=(SCHEDULE_ID_PARAM,),
        answers=(
            Answer(204, "Deleted"),
            API_KEY_401,
            _NO_SCHEDULE,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
)

# Webhooks (functions/webhooks). deliver_webhooks, which sends them, is internal:
# Pub/Sub pushes to it and Cloud Scheduler runs its sweep.

WEBHOOK_ID = {
    "type": "string",
    "pattern": "^(ep|tk)_[0-9a-f]{32}$",
    "description": "`ep_` and 32 hex digits (an endpoint), or `tk_`... (the per-task key)",
}
DELIVERY_ID = {"type": "string", "pattern": "^dl_[0-9a-f]{32}$"}
WEBHOOK_ID_PARAM = Param("webhook_id", "path", "The webhook's id", WEBHOOK_ID, True)
_WEBHOOK_VIEW = (Content(JSON, "shared.webhooks.models:EndpointView"),)
_WEBHOOK_CREATED = (Content(JSON, "shared.webhooks.models:EndpointCreated"),)
_NO_WEBHOOK = Answer(404, "No such webhook, or another tenant's", problems=("not-found",))
_BODY_413 = Answer(413, "The body is over 1 MiB", problems=("payload-too-large",))


def _webhook_route(
    method: str,
    path: str,
    operation_id: str,
    summary: str,
    answers: tuple[Answer, ...],
    **extra: Any,
) -> Route:
    return Route(
        method,
        path,
        "webhooks",
        operation_id=operation_id,
        summary=summary,
        auth=Auth.API_KEY,
        tag="webhooks",
        answers=(*answers, INTERNAL, UNAVAILABLE),
        **extra,
    )


_WEBHOOK_ROUTES = (
    _webhook_route(
        "POST",
        "/webhooks",
        "createWebhook",
        "Register an endpoint for task events: its signing secret is shown once",
        (
            Answer(201, "Registered", _WEBHOOK_CREATED, headers=("Location",)),
            BODY_400,
            API_KEY_401,
            Answer(409, "The tenant has 20 webhooks already", problems=("too-many-webhooks",)),
            _BODY_413,
            BODY_415,
            Answer(
                422,
                "An invalid field, or a URL refused: not https, credentials in it, or an "
                "address that is not public (the rule is named)",
                problems=("validation",),
            ),
        ),
        description=(
            "Deliveries follow Standard Webhooks: `webhook-id`, `webhook-timestamp` and"
            " `webhook-signature` (`v1,` HMAC-SHA256, or `v1a,` Ed25519 with `signature: v1a`)."
        ),
        body="shared.webhooks.models:EndpointRequest",
    ),
    _webhook_route(
        "GET",
        "/webhooks",
        "listWebhooks",
        "The caller's webhooks, newest first, a page at a time (never a secret)",
        (
            Answer(
                200, "A page of webhooks", (Content(JSON, "shared.webhooks.models:EndpointPage"),)
            ),
            _PAGE_400,
            API_KEY_401,
            _PAGE_422,
        ),
        params=_PAGE_PARAMS,
    ),
    _webhook_route(
        "POST",
        "/webhooks/signing-key",
        "createSigningKey",
        "Create the key that signs deliveries to a submit's own `webhook_url`",
        (
            Answer(201, "Created: the key, shown once", _WEBHOOK_CREATED, headers=("Location",)),
            BODY_400,
            API_KEY_401,
            Answer(409, "The tenant has one: rotate it instead", problems=("conflict",)),
            _BODY_413,
            BODY_415,
            Answer(422, "An invalid field", problems=("validation",)),
        ),
        description="`{}` asks for a `v1` (HMAC) key.",
        body="shared.webhooks.models:SigningKeyRequest",
    ),
    _webhook_route(
        "GET",
        "/webhooks/{webhook_id}",
        "getWebhook",
        "A webhook: its URL, events, status and the keys signing now",
        (Answer(200, "The webhook", _WEBHOOK_VIEW), API_KEY_401, _NO_WEBHOOK),
        params=(WEBHOOK_ID_PARAM,),
    ),
    _webhook_route(
        "DELETE",
        "/webhooks/{webhook_id}",
        "deleteWebhook",
        "Remove a webhook: nothing more is sent to it",
        (Answer(204, "Deleted"), API_KEY_401, _NO_WEBHOOK),
        params=(WEBHOOK_ID_PARAM,),
    ),
    _webhook_route(
        "POST",
        "/webhooks/{webhook_id}:rotate-secret",
        "rotateWebhookSecret",
        "A new signing key, shown once; the old one keeps signing beside it for 24 h",
        (Answer(200, "Rotated: the new key", _WEBHOOK_CREATED), API_KEY_401, _NO_WEBHOOK),
        params=(WEBHOOK_ID_PARAM,),
    ),
    _webhook_route(
        "GET",
        "/webhooks/{webhook_id}/deliveries",
        "listWebhookDeliveries",
        "A webhook's deliveries, newest first, each with every attempt",
        (
            Answer(
                200,
                "A page of deliveries",
                (Content(JSON, "shared.webhooks.models:DeliveryPage"),),
            ),
            _PAGE_400,
            API_KEY_401,
            _NO_WEBHOOK,
            _PAGE_422,
        ),
        params=(WEBHOOK_ID_PARAM, *_PAGE_PARAMS),
    ),
    _webhook_route(
        "POST",
        "/webhooks/deliveries/{delivery_id}:replay",
        "replayWebhookDelivery",
        "Send a delivery again, with the same `webhook-id`, on a fresh retry schedule",
        (
            Answer(
                202,
                "Pending again (idempotent while pending)",
                (Content(JSON, "shared.webhooks.models:DeliveryReplayed"),),
            ),
            API_KEY_401,
            Answer(404, "No such delivery, or another tenant's", problems=("not-found",)),
            Answer(
                409,
                "Its webhook was deleted or disabled",
                problems=("delivery-not-replayable",),
            ),
        ),
        params=(Param("delivery_id", "path", "The delivery's id", DELIVERY_ID, True),),
    ),
)

# The caller's token budget (functions/usage); operators grant and set budgets with `aia budgets`.

_USAGE_ROUTES = (
    Route(
        "GET",
        "/usage",
        "usage",
        operation_id="getUsage",
        summary="The caller's token budget: balance, reserved, spent this month by type and day",
        auth=Auth.API_KEY,
        tag="usage",
        answers=(
            Answer(
                200, "The budget and the limits", (Content(JSON, "shared.flow.usage:UsageView"),)
            ),
            API_KEY_401,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/usage/ledger",
        "usage",
        operation_id="listLedger",
        summary="The caller's ledger: reserve, settle, refund and grant entries, newest first",
        auth=Auth.API_KEY,
        tag="usage",
        params=(
            Param(
                "kind",
                "query",
                "Only entries of this kind",
                {"type": "string", "enum": ["reserve", "settle", "refund", "grant"]},
            ),
            # shared.flow.ledger's page sizes (a unit test keeps them equal).
            Param(
                "limit",
                "query",
                "Page size",
                {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            ),
            _PAGE_PARAMS[1],
        ),
        answers=(
            Answer(200, "A page of entries", (Content(JSON, "shared.flow.usage:LedgerPage"),)),
            _PAGE_400,
            API_KEY_401,
            _PAGE_422,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
)

_HEALTH_ANSWERS = (
    Answer(
        200,
        "Ready (`ok`) or serving with a degraded dependency",
        (Content(JSON, "shared.api.models:Health"),),
    ),
    Answer(400, "Unknown probe", problems=("bad-request",)),
    OPERATOR_401,
    INTERNAL,
    Answer(
        503,
        "Down: a critical dependency failed (a health body), or the function is not running",
        (Content(JSON, "shared.api.models:Health"),),
        headers=("Retry-After",),
        problems=("unavailable",),
    ),
)
_HEALTH_PARAMS = (
    Param(
        "probe",
        "query",
        "`live` answers at once without touching a dependency, and needs no token; "
        "`ready` (the default) checks Firestore and Pub/Sub",
        {"type": "string", "enum": ["live", "ready"]},
    ),
)

ROUTES: tuple[Route, ...] = (
    _submit(
        "/tasks",
        "submitTask",
        "Submit a task",
        "The body's `payload` must be valid for its `type`: one schema per registered type.",
    ),
    _submit("/tasks/submit", "submitTaskAlias", "Submit a task (the same as POST /tasks)"),
    Route(
        "GET",
        "/tasks",
        "task_status",
        operation_id="listTasks",
        summary="The caller's tasks, newest first, a page at a time",
        auth=Auth.API_KEY,
        params=(
            Param(
                "status",
                "query",
                "Only tasks in this status",
                {"type": "string", "enum": TASK_STATUSES},
            ),
            Param("type", "query", "Only tasks of this type", {"type": "string", "minLength": 1}),
            *_PAGE_PARAMS,
        ),
        answers=(
            Answer(200, "A page of task views", (Content(JSON, "shared.tasks.models:TaskPage"),)),
            _PAGE_400,
            API_KEY_401,
            _PAGE_422,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/tasks/counts",
        "task_status",
        operation_id="countTasks",
        summary="How many of the caller's tasks are in each status",
        auth=Auth.API_KEY,
        answers=(
            Answer(200, "Counts by status", (Content(JSON, "shared.api.models:TaskCounts"),)),
            API_KEY_401,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/tasks/{task_id}",
        "task_status",
        operation_id="getTask",
        summary="A task's status, attempts, timestamps and result or error",
        auth=Auth.API_KEY,
        params=(TASK_ID_PARAM,),
        answers=(
            Answer(200, "The task view", (Content(JSON, "shared.tasks.models:TaskView"),)),
            API_KEY_401,
            Answer(404, "No such task, or another tenant's", problems=("not-found",)),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "POST",
        "/tasks/{task_id}:replay",
        "submit_task",
        operation_id="replayTask",
        summary="Run a failed (dead-lettered) task again, with a fresh set of attempts",
        description="Idempotent: a task already queued or running again is answered as it is.",
        auth=Auth.API_KEY,
        params=(TASK_ID_PARAM,),
        answers=(
            Answer(
                202,
                "Queued again (or already queued or running)",
                (Content(JSON, "shared.api.models:TaskReplayed"),),
                headers=("Location",),
            ),
            API_KEY_401,
            Answer(
                402,
                "The tenant's token balance cannot cover another run of the task",
                problems=("budget-exhausted",),
            ),
            Answer(404, "No such task, or another tenant's", problems=("not-found",)),
            Answer(
                409,
                "The task has not failed, so there is nothing to replay",
                problems=("not-replayable",),
            ),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "POST",
        "/tasks/{task_id}:cancel",
        "submit_task",
        operation_id="cancelTask",
        summary="Cancel a task: it never starts if it has not, and a running attempt is stopped",
        description=(
            "A queued or scheduled task is cancelled at once. A running one sees `ctx.cancelled`"
            " within about a second and is stopped at its deadline if it ignores it; its late"
            " result is discarded. Idempotent."
        ),
        auth=Auth.API_KEY,
        params=(TASK_ID_PARAM,),
        answers=(
            Answer(
                202,
                "Cancelled, or asked to stop (`cancel_requested`)",
                (Content(JSON, "shared.api.models:TaskReplayed"),),
                headers=("Location",),
            ),
            API_KEY_401,
            Answer(404, "No such task, or another tenant's", problems=("not-found",)),
            Answer(409, "The task already succeeded or failed", problems=("conflict",)),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    *_SCHEDULE_ROUTES,
    *_WEBHOOK_ROUTES,
    *_USAGE_ROUTES,
    Route(
        "GET",
        "/health",
        "health",
        operation_id="health",
        summary="Liveness (`?probe=live`) and readiness of the service",
        auth=Auth.OPERATOR,
        tag="operations",
        params=_HEALTH_PARAMS,
        answers=_HEALTH_ANSWERS,
    ),
    # A function's own URL reaches it at the root, and so does the load balancer's default.
    Route(
        "GET",
        "/",
        "health",
        operation_id="healthAtRoot",
        summary="The same as GET /health",
        auth=Auth.OPERATOR,
        tag="operations",
        params=_HEALTH_PARAMS,
        answers=_HEALTH_ANSWERS,
        documented=False,
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        operation_id="metrics",
        summary="Task counters: Prometheus text, or JSON when `Accept: application/json`",
        auth=Auth.OPERATOR,
        tag="operations",
        answers=(
            Answer(
                200,
                "The figures",
                (Content(PROMETHEUS, "text"), Content(JSON, "shared.api.models:MetricsJson")),
            ),
            OPERATOR_401,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        operation_id="openapi",
        summary="This document",
        auth=Auth.NONE,
        tag="meta",
        answers=(
            Answer(200, "OpenAPI 3.1", (Content(JSON, "openapi"),)),
            INTERNAL,
            PUBLIC_503,
        ),
    ),
    Route(
        "GET",
        "/dashboard",
        "dashboard",
        operation_id="dashboard",
        summary="The tenants' dashboard (a page; the API key is pasted into it)",
        auth=Auth.NONE,
        tag="meta",
        answers=(
            Answer(200, "The page", (Content(HTML, "text"),), headers=("Content-Security-Policy",)),
            INTERNAL,
            PUBLIC_503,
        ),
    ),
    Route(
        "GET",
        "/dashboard/{asset}",
        "dashboard",
        operation_id="dashboardAsset",
        summary="The dashboard's script and style sheet",
        auth=Auth.NONE,
        tag="meta",
        params=(
            Param(
                "asset",
                "path",
                "A file of the page",
                # shared.dashboard.ASSETS (a unit test keeps them equal).
                {"type": "string", "enum": ["app.js", "index.html", "style.css"]},
                True,
            ),
        ),
        answers=(
            Answer(
                200,
                "The file",
                (
                    Content("text/javascript", "text"),
                    Content("text/css", "text"),
                    Content(HTML, "text"),
                ),
                headers=("Content-Security-Policy",),
            ),
            Answer(404, "No such file", problems=("not-found",)),
            INTERNAL,
            PUBLIC_503,
        ),
    ),
    # Workflows (shared/workflows): static DAGs of task nodes.
    Route(
        "POST",
        "/workflows",
        "workflows",
        operation_id="createWorkflow",
        summary="Submit a workflow: named task nodes and the nodes each depends on",
        description=(
            "Validated whole before anything is stored: each node as a task submit is (its"
            " `payload` by its `type`), and the graph (every dependency a node, no cycle). A 422"
            " names the node at fault (`field`: `nodes.<name>.payload.x`,"
            " `nodes.<name>.depends_on`; a cycle's nodes in `cycle`). Every node is stored"
            " before any runs; a node starts once all it depends on succeeded."
        ),
        tag="workflows",
        auth=Auth.API_KEY,
        params=(IDEMPOTENCY_KEY,),
        body="shared.workflows.models:WorkflowRequest",
        answers=(
            Answer(
                202,
                "Stored (encrypted), its first nodes queued; `dispatch: deferred` when their "
                "publish is left to the redispatch sweep",
                (Content(JSON, "shared.workflows.models:WorkflowAccepted"),),
                headers=("Location", "Idempotent-Replayed"),
            ),
            BODY_400,
            API_KEY_401,
            Answer(
                402,
                "The tenant's token balance cannot cover the price of every node (both in the "
                "body): nothing was stored",
                problems=("budget-exhausted",),
            ),
            Answer(
                413,
                "The body is over 1 MiB, or a node too large to store",
                problems=("payload-too-large",),
            ),
            BODY_415,
            Answer(
                422,
                "A node is invalid (unknown type, invalid payload or field), a dependency is "
                "no node, the nodes form a cycle, or an Idempotency-Key was reused with "
                "another body",
                problems=("validation", "idempotency-mismatch"),
            ),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/workflows",
        "workflows",
        operation_id="listWorkflows",
        summary="The caller's workflows, newest first, a page at a time",
        tag="workflows",
        auth=Auth.API_KEY,
        params=_PAGE_PARAMS,
        answers=(
            Answer(
                200,
                "A page of workflow summaries",
                (Content(JSON, "shared.workflows.models:WorkflowPage"),),
            ),
            _PAGE_400,
            API_KEY_401,
            _PAGE_422,
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "GET",
        "/workflows/{workflow_id}",
        "workflows",
        operation_id="getWorkflow",
        summary="A workflow's status (derived from its nodes) and each node's",
        tag="workflows",
        auth=Auth.API_KEY,
        params=(WORKFLOW_ID_PARAM,),
        answers=(
            Answer(
                200, "The workflow view", (Content(JSON, "shared.workflows.models:WorkflowView"),)
            ),
            API_KEY_401,
            Answer(404, "No such workflow, or another tenant's", problems=("not-found",)),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
    Route(
        "POST",
        "/workflows/{workflow_id}:cancel",
        "workflows",
        operation_id="cancelWorkflow",
        summary="Cancel a workflow: no node starts any more, and running ones are stopped",
        description=(
            "Every unfinished node is cancelled, as a task cancel does (a running one sees "
            "`ctx.cancelled`). Idempotent."
        ),
        tag="workflows",
        auth=Auth.API_KEY,
        params=(WORKFLOW_ID_PARAM,),
        answers=(
            Answer(
                202,
                "Cancelled; nodes still running stop shortly",
                (Content(JSON, "shared.workflows.models:WorkflowView"),),
                headers=("Location",),
            ),
            API_KEY_401,
            Answer(404, "No such workflow, or another tenant's", problems=("not-found",)),
            Answer(409, "The workflow already succeeded or failed", problems=("conflict",)),
            INTERNAL,
            UNAVAILABLE,
        ),
    ),
)

# What any path answers outside the table: described in the document's components.
NOT_FOUND = Answer(404, "No route for this path", problems=("not-found",))
METHOD_NOT_ALLOWED = Answer(
    405,
    "The path exists; the method does not",
    headers=("Allow",),
    problems=("method-not-allowed",),
)


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    # A parameter is one path segment and never holds ":", which starts a custom
    # method such as ":replay".
    parts = re.split(r"\{\w+\}", template)
    return re.compile("[^/:]+".join(re.escape(p) for p in parts))


def normalize(path: str) -> str:
    """The path as routes see it: no trailing slash except on the root."""
    return path if path == "/" else path.rstrip("/") or "/"


def _serving(path: str) -> list[Route]:
    """Routes of the path: a literal path shadows the templates it also matches."""
    path = normalize(path)
    literal = [r for r in ROUTES if "{" not in r.path and r.path == path]
    return literal or [r for r in ROUTES if r.matches(path)]


def find(method: str, path: str) -> Route | None:
    """The route answering `method path`, if the table has one."""
    return next((r for r in _serving(path) if r.method == method), None)


def allowed_methods(path: str) -> tuple[str, ...]:
    """Every method the table serves at `path` (what a 405's Allow header lists)."""
    return tuple(sorted({r.method for r in _serving(path)}))


# Routing, the same way in the dev gateway and the load balancer: a URL map matches a
# full path or a prefix, and optionally the `:method` pseudo-header, first rule first.


@dataclass(frozen=True)
class Rule:
    path: str
    prefix: bool
    method: str | None
    function: str

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path


def _rule_key(route: Route) -> tuple[str, bool]:
    if "{" not in route.path:
        return route.path, False
    return route.path[: route.path.index("{")], True


@functools.cache
def routing_rules() -> tuple[Rule, ...]:
    """The table as load-balancer rules, in priority order.

    Routes are grouped by the full path or the prefix before their first
    parameter. One function per group gives one rule; a group shared by several
    functions gets a rule per method that differs from the one serving GET, and a
    catch-all for that one (which answers 405 for methods nobody serves).
    """
    groups: dict[tuple[str, bool], list[Route]] = {}
    for route in ROUTES:
        groups.setdefault(_rule_key(route), []).append(route)
    rules: list[Rule] = []
    for (path, prefix), routes in groups.items():
        by_method: dict[str, set[str]] = {}
        for route in routes:
            by_method.setdefault(route.method, set()).add(route.function)
        ambiguous = {m: fns for m, fns in by_method.items() if len(fns) > 1}
        if ambiguous:
            raise ValueError(f"{path}: one method, several functions: {ambiguous}")
        default = next(iter(by_method.get("GET") or {routes[0].function}))
        for method in sorted(by_method):
            (function,) = by_method[method]
            if function != default:
                rules.append(Rule(path, prefix, method, function))
        rules.append(Rule(path, prefix, None, default))
    # Full paths before prefixes, longer prefixes first; stable within a group.
    order = {id(rule): i for i, rule in enumerate(rules)}
    return tuple(
        sorted(rules, key=lambda r: (r.prefix, -len(r.path) if r.prefix else 0, order[id(r)]))
    )


def route_for(method: str, path: str) -> str | None:
    """Name of the function a request reaches, or None when no rule matches."""
    path = normalize(path)
    return next((r.function for r in routing_rules() if r.matches(method, path)), None)
