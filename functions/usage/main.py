"""usage: the caller's budget and ledger.

GET /usage          balance, reserved, spent this month by type and by day
GET /usage/ledger   the ledger's entries (reserve, settle, refund, grant), newest first
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.api.dispatch import route_of


@functions_framework.http
@http.endpoint
def usage(request: flask.Request) -> flask.Response:
    route = route_of(request, "usage", root="/usage")
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.usage_service()
    if route.operation_id == "listLedger":
        return http.json_response(service.ledger(tenant_id, request.args.to_dict()))
    return http.json_response(service.usage(tenant_id))
