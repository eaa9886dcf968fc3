"""task_status: GET /tasks/{task_id}, GET /tasks and GET /tasks/counts — the caller's tasks only."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.api.dispatch import route_of


@functions_framework.http
@http.endpoint
def task_status(request: flask.Request) -> flask.Response:
    route = route_of(request, "task_status", root="/tasks")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    if route.operation_id == "listTasks":
        page = providers.status_service().list(tenant_id, request.args.to_dict())
        return http.json_response(
            page.model_dump(mode="json", exclude_none=True)
            | {"tasks": [view.to_json() for view in page.tasks]}
        )
    if route.operation_id == "countTasks":
        return http.json_response({"counts": providers.status_service().counts(tenant_id)})
    task_id = request.path.rstrip("/").rsplit("/", 1)[1]
    return http.json_response(providers.status_service().get(tenant_id, task_id).to_json())
