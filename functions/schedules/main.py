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
from shared.api.dispatch import route_of
from shared.config import get_settings

# At start-up: a broken task module stops the function here, not on a request.
providers.task_registry()


@functions_framework.http
@http.endpoint
def schedules(request: flask.Request) -> flask.Response:
    route = route_of(request, "schedules", root="/schedules")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.schedule_service()
    if route.operation_id == "listSchedules":
        return http.json_response(service.list(tenant_id, request.args.to_dict()))
    if route.operation_id == "createSchedule":
        created = service.create(tenant_id, http.read_json_body(request))
        location = f"{get_settings().public_base_url}/schedules/{created['schedule_id']}"
        return http.json_response(created, 201, {"Location": location})
    schedule_id = request.path.rstrip("/").rsplit("/", 1)[1].partition(":")[0]
    if route.operation_id == "pauseSchedule":
        return http.json_response(service.pause(tenant_id, schedule_id))
    if route.operation_id == "resumeSchedule":
        return http.json_response(service.resume(tenant_id, schedule_id))
    if route.operation_id == "deleteSchedule":
        service.delete(tenant_id, schedule_id)
        return flask.Response(status=204)
    return http.json_response(service.get(tenant_id, schedule_id))
