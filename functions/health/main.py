"""HTTP function `health`: `GET /` or `/health` (readiness), `?probe=live` (liveness)."""

from __future__ import annotations

import json
from typing import Any

import flask
import functions_framework

from shared.errors import AIAError, MethodNotAllowed, NotFound
from shared.health import check_health

PATHS = frozenset({"/", "/health"})
ALLOWED = ("GET", "HEAD")


def _json(body: dict[str, Any], status: int, content_type: str) -> flask.Response:
    response = flask.Response(json.dumps(body), status=status, content_type=content_type)
    # Probes must see the live state, never a cached answer.
    response.headers["Cache-Control"] = "no-store"
    return response


def _problem(err: AIAError) -> flask.Response:
    response = _json(err.problem(), err.status, "application/problem+json")
    if isinstance(err, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(err.allowed)
    return response


@functions_framework.http
def health(request: flask.Request) -> flask.Response:
    try:
        if (request.path.rstrip("/") or "/") not in PATHS:
            raise NotFound(f"no such path {request.path!r}; use /health")
        if request.method not in ALLOWED:
            raise MethodNotAllowed(f"{request.method} is not allowed here", allowed=ALLOWED)
        body, status = check_health(probe=request.args.get("probe"))
    except AIAError as err:
        return _problem(err)
    return _json(body, status, "application/json")
