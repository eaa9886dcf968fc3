"""dashboard: `GET /dashboard`, a static page that calls the API with a key pasted into it."""

from __future__ import annotations

import flask
import functions_framework

from shared import http
from shared.api.dispatch import route_of
from shared.config import get_settings
from shared.dashboard import INDEX, SECURITY_HEADERS, page


@functions_framework.http
@http.endpoint
def dashboard(request: flask.Request) -> flask.Response:
    # A function's own URL reaches it at the root, the gateway at /dashboard.
    route = route_of(request, "dashboard", root="/dashboard")
    name = INDEX if route.operation_id == "dashboard" else request.path.rsplit("/", 1)[1]
    body, content_type = page(name, get_settings().trace_console_url)
    return flask.Response(body, 200, content_type=content_type, headers=SECURITY_HEADERS)
