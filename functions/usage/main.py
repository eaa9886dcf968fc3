"""usage: GET /usage (balance, reserved, spent this month) and GET /usage/ledger — the caller's."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.errors import NotFound


@functions_framework.http
@http.endpoint
def usage(request: flask.Request) -> flask.Response:
    http.require_method(request, "GET")
    parts = [p for p in request.path.split("/") if p]
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    if parts in ([], ["usage"]):
        return http.json_response(providers.usage_service().usage(tenant_id))
    if parts == ["usage", "ledger"]:
        args = request.args.to_dict()
        return http.json_response(providers.usage_service().ledger(tenant_id, args))
    raise NotFound(f"no route for {request.path}")
