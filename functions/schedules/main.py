"""schedules: the caller's cron schedules — create, list, read, pause, resume, delete.

POST   /schedules                 201, the schedule and its next 5 runs
GET    /schedules                 200 {"schedules": [...], "next_page_token"?}
GET    /schedules/{id}            200
POST   /schedules/{id}:pause      200 (idempotent)
POST   /schedules/{id}:resume     200 (idempotent)
DELETE /schedules/{id}            204
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.config import get_settings
from shared.errors import NotFound

ACTIONS = ("pause", "resume")
# At start-up: a broken task module stops the function here, not on a request.
providers.task_registry()


@functions_framework.http
@http.endpoint
def schedules(request: flask.Request) -> flask.Response:
    parts = [p for p in request.path.split("/") if p]
    if parts[:1] == ["schedules"]:
        parts = parts[1:]  # the gateway's path; the function's own URL has no prefix
    if len(parts) > 1:
        raise NotFound(f"no route for {request.path}")
    if not parts:
        http.require_method(request, "GET", "POST")
        tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
        service = providers.schedule_service()
        if request.method == "GET":
            return http.json_response(service.list(tenant_id, request.args.to_dict()))
        created = service.create(tenant_id, http.read_json_body(request))
        location = f"{get_settings().public_base_url}/schedules/{created['schedule_id']}"
        return http.json_response(created, 201, {"Location": location})
    schedule_id, _, action = parts[0].partition(":")
    if action:
        if action not in ACTIONS:
            raise NotFound(f"no route for {request.path}")
        http.require_method(request, "POST")
    else:
        http.require_method(request, "GET", "DELETE")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.schedule_service()
    if action == "pause":
        return http.json_response(service.pause(tenant_id, schedule_id))
    if action == "resume":
        return http.json_response(service.resume(tenant_id, schedule_id))
    if request.method == "DELETE":
        service.delete(tenant_id, schedule_id)
        return flask.Response(status=204)
    return http.json_response(service.get(tenant_id, schedule_id))
