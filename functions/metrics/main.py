"""HTTP function `metrics`: `GET /metrics` as Prometheus text, or JSON when asked for."""

from __future__ import annotations

import json
from typing import Any

import flask
import functions_framework
from prometheus_client import CONTENT_TYPE_LATEST

from shared import metrics as task_metrics
from shared.errors import AIAError, MethodNotAllowed, NotFound

# "/" too: a function's own URL reaches it at the root, the gateway at /metrics.
PATHS = frozenset({"/", "/metrics"})
ALLOWED = ("GET", "HEAD")
JSON = "application/json"


def _response(body: bytes, status: int, content_type: str) -> flask.Response:
    response = flask.Response(body, status=status, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept"
    return response


def _json(body: dict[str, Any], status: int, content_type: str = JSON) -> flask.Response:
    return _response(json.dumps(body).encode(), status, content_type)


def _problem(err: AIAError) -> flask.Response:
    response = _json(err.problem(), err.status, "application/problem+json")
    if isinstance(err, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(err.allowed)
    return response


def _wants_json(request: flask.Request) -> bool:
    # Text wins ties and wildcards: Prometheus and curl get the exposition format.
    return request.accept_mimetypes.best_match(["text/plain", JSON], default="text/plain") == JSON


@functions_framework.http
def metrics(request: flask.Request) -> flask.Response:
    try:
        if (request.path.rstrip("/") or "/") not in PATHS:
            raise NotFound(f"no such path {request.path!r}; use /metrics")
        if request.method not in ALLOWED:
            raise MethodNotAllowed(f"{request.method} is not allowed here", allowed=ALLOWED)
        snapshot = task_metrics.collect_current()
    except AIAError as err:
        return _problem(err)
    if _wants_json(request):
        return _json(task_metrics.render_json(snapshot), 200)
    return _response(task_metrics.render_prometheus(snapshot), 200, CONTENT_TYPE_LATEST)
