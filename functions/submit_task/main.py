"""submit_task: POST /tasks (or /tasks/submit), POST /tasks/{id}:replay and :cancel — the writes."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.api.dispatch import route_of
from shared.config import get_settings
from shared.tasks.models import TaskView

# At start-up: a broken task module stops the function here, not on a request.
providers.task_registry()


@functions_framework.http
@http.endpoint
def submit_task(request: flask.Request) -> flask.Response:
    route = route_of(request, "submit_task", root="/tasks")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    if route.operation_id in ("replayTask", "cancelTask"):
        task_id, _, action = request.path.rstrip("/").rsplit("/", 1)[1].partition(":")
        return _replay(tenant_id, task_id) if action == "replay" else _cancel(tenant_id, task_id)
    body = http.read_json_body(request)
    submitted = providers.submit_service().submit(
        tenant_id, body, request.headers.get("Idempotency-Key")
    )
    status_url = _status_url(submitted.task_id)
    answer = {
        "task_id": submitted.task_id,
        "status": submitted.status.value,
        "status_url": status_url,
    }
    if submitted.run_at is not None:
        answer["run_at"] = submitted.run_at.isoformat()
    headers = {"Location": status_url}
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


def _cancel(tenant_id: str, task_id: str) -> flask.Response:
    task = providers.submit_service().cancel(tenant_id, task_id)
    status_url = _status_url(task.task_id)
    # 202: a running attempt stops shortly; the view says whether it has already.
    answer = TaskView.of(task).to_json() | {"status_url": status_url}
    return http.json_response(answer, 202, {"Location": status_url})


def _status_url(task_id: str) -> str:
    return f"{get_settings().public_base_url}/tasks/{task_id}"
