"""openapi: `GET /openapi.json`, the OpenAPI 3.1 document of this deployment (no auth)."""

from __future__ import annotations

import flask
import functions_framework

from shared import http
from shared.api.dispatch import route_of
from shared.api.serving import openapi_json


@functions_framework.http
@http.endpoint
def openapi(request: flask.Request) -> flask.Response:
    # A function's own URL reaches it at the root, the gateway at /openapi.json.
    route_of(request, "openapi", root="/openapi.json")
    return flask.Response(
        openapi_json(),
        200,
        mimetype="application/json",
        headers={"Cache-Control": "public, max-age=300"},
    )
