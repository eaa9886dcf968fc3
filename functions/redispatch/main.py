"""redispatch: POST / from Cloud Scheduler — publish tasks that are stuck again."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers


@functions_framework.http
@http.endpoint
def redispatch(request: flask.Request) -> flask.Response:
    http.require_method(request, "POST")
    swept = providers.redispatcher().sweep()
    return http.json_response(
        {"found": swept.found, "published": swept.published, "dead_lettered": swept.dead_lettered}
    )
