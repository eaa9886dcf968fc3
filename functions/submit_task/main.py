"""submit_task: POST /tasks/submit and POST /tasks — validate, store encrypted, publish."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.config import get_settings


@functions_framework.http
@http.endpoint
def submit_task(request: flask.Request) -> flask.Response:
    http.require_path(request, "/", "/tasks/submit", "/tasks")
    http.require_method(request, "POST")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    body = http.read_json_body(request)
    submitted = providers.submit_service().submit(
        tenant_id, body, request.headers.get("Idempotency-Key")
    )
    status_url = f"{get_settings().public_base_url}/tasks/{submitted.task_id}"
    answer = {"task_id": submitted.task_id, "status": "queued", "status_url": status_url}
    headers = {"Location": status_url}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if not submitted.dispatched:
        # Stored durably; the redispatcher publishes it shortly.
        answer["dispatch"] = "deferred"
    return http.json_response(answer, 202, headers)
