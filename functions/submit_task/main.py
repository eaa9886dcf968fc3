"""submit_task: POST /tasks (or /tasks/submit) and POST /tasks/{id}:replay — store, publish."""

from __future__ import annotations

import re

import flask
import functions_framework

from shared import http, providers
from shared.config import get_settings
from shared.tasks.models import TaskView

REPLAY = re.compile(r"/tasks/(?P<task_id>[^/]+):replay")
# At start-up: a broken task module stops the function here, not on a request.
providers.task_registry()


@functions_framework.http
@http.endpoint
def submit_task(request: flask.Request) -> flask.Response:
    replay = REPLAY.fullmatch(request.path)
    if replay is None:
        http.require_path(request, "/", "/tasks/submit", "/tasks")
    http.require_method(request, "POST")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    if replay is not None:
        return _replay(tenant_id, replay["task_id"])
    body = http.read_json_body(request)
    submitted = providers.submit_service().submit(
        tenant_id, body, request.headers.get("Idempotency-Key")
    )
    status_url = _status_url(submitted.task_id)
    answer = {"task_id": submitted.task_id, "status": "queued", "status_url": status_url}
    headers = {"Location": status_url, **submitted.headers}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if not submitted.dispatched:
        # Stored durably; the redispatcher publishes it shortly.
        answer["dispatch"] = "deferred"
    return http.json_response(answer, 202, headers)


def _replay(tenant_id: str, task_id: str) -> flask.Response:
    replayed = providers.submit_service().replay(tenant_id, task_id)
    status_url = _status_url(replayed.task.task_id)
    answer = TaskView.of(replayed.task).to_json() | {"status_url": status_url}
    if not replayed.dispatched:
        answer["dispatch"] = "deferred"
    return http.json_response(answer, 202, {"Location": status_url})


def _status_url(task_id: str) -> str:
    return f"{get_settings().public_base_url}/tasks/{task_id}"
