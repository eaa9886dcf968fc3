"""workflows: create (POST /workflows), list, read and cancel (`/workflows/{id}:cancel`)."""

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
def workflows(request: flask.Request) -> flask.Response:
    route = route_of(request, "workflows", root="/workflows")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.workflow_service()
    if route.operation_id == "createWorkflow":
        body = http.read_json_body(request)
        accepted = service.create(tenant_id, body, request.headers.get("Idempotency-Key"))
        status_url = _status_url(accepted.workflow_id)
        answer = {
            "workflow_id": accepted.workflow_id,
            "status": "running",
            "status_url": status_url,
        }
        headers = {"Location": status_url}
        if accepted.replayed:
            headers["Idempotent-Replayed"] = "true"
        if not accepted.dispatched:
            answer["dispatch"] = "deferred"  # stored; the redispatcher publishes the roots
        return http.json_response(answer, 202, headers)
    if route.operation_id == "listWorkflows":
        return http.json_response(service.list(tenant_id, request.args.to_dict()).to_json())
    workflow_id = request.path.rstrip("/").rsplit("/", 1)[1].partition(":")[0]
    if route.operation_id == "cancelWorkflow":
        view = service.cancel(tenant_id, workflow_id)
        status_url = _status_url(workflow_id)
        return http.json_response(view.to_json(), 202, {"Location": status_url})
    return http.json_response(service.get(tenant_id, workflow_id).to_json())


def _status_url(workflow_id: str) -> str:
    return f"{get_settings().public_base_url}/workflows/{workflow_id}"
