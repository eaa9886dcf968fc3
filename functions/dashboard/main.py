"""dashboard: `GET /dashboard`, a static page that calls the API with a key pasted into it."""

from __future__ import annotations

import flask
import functions_framework

from shared import http
from shared.dashboard import INDEX, SECURITY_HEADERS, asset
from shared.errors import NotFound


@functions_framework.http
@http.endpoint
def dashboard(request: flask.Request) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    # "/" too: a function's own URL reaches it at the root, the gateway at /dashboard.
    if path in ("/", "/dashboard"):
        name = INDEX
    elif path.startswith("/dashboard/"):
        name = path.removeprefix("/dashboard/")
    else:
        raise NotFound(f"no route for {request.path}")
    http.require_method(request, "GET", "HEAD")
    body, content_type = asset(name)
    return flask.Response(body, 200, content_type=content_type, headers=SECURITY_HEADERS)
