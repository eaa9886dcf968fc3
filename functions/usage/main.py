"""usage: GET /usage (balance, reserved, spent this month) and GET /usage/ledger — the caller's."""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.errors import NotFound

# The function's own URL reaches it at the root, the gateway at /usage.
ROUTES = {(): "usage", ("usage",): "usage", ("usage", "ledger"): "ledger"}


@functions_framework.http
@http.endpoint
def usage(request: flask.Request) -> flask.Response:
    route = ROUTES.get(tuple(p for p in request.path.split("/") if p))
    if route is None:
        raise NotFound(f"no route for {request.path}")
    http.require_method(request, "GET")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.usage_service()
    if route == "ledger":
        return http.json_response(service.ledger(tenant_id, request.args.to_dict()))
    return http.json_response(service.usage(tenant_id))
