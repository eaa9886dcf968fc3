"""task_status: GET /tasks/{task_id}, GET /tasks and GET /tasks/counts — the caller's tasks only."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.errors import NotFound


@functions_framework.http
@http.endpoint
def task_status(request: flask.Request) -> flask.Response:
    http.require_method(request, "GET")
    parts = [p for p in request.path.split("/") if p]
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    if parts in ([], ["tasks"]):
        page = providers.status_service().list(tenant_id, request.args.to_dict())
        return http.json_response(
            page.model_dump(mode="json", exclude_none=True)
            | {"tasks": [view.to_json() for view in page.tasks]}
        )
    if parts == ["tasks", "counts"]:
        return http.json_response({"counts": providers.status_service().counts(tenant_id)})
    if len(parts) == 2 and parts[0] == "tasks":
        return http.json_response(providers.status_service().get(tenant_id, parts[1]).to_json())
    raise NotFound(f"no route for {request.path}")
