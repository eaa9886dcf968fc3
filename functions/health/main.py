"""health: `GET /` or `/health` (readiness), `?probe=live` (liveness, touches nothing)."""

from __future__ import annotations

import flask
import functions_framework

from shared import http
from shared.operations.health import check_health


@functions_framework.http
@http.probe_endpoint
def health(request: flask.Request) -> flask.Response:
    http.require_path(request, "/", "/health")
    http.require_method(request, "GET", "HEAD")
    probe = request.args.get("probe")
    if probe != "live":
        # The liveness probe stays anonymous; dependency detail is for operators.
        http.require_operator(request)
    body, status = check_health(probe=probe)
    # Probes must see the live state, never a cached answer.
    return http.json_response(body, status, {"Cache-Control": "no-store"})
