"""webhooks: the tenant's webhook endpoints, their signing keys, deliveries and replays.

POST   /webhooks                               register an endpoint (201, key shown once)
GET    /webhooks                               the caller's endpoints, newest first
POST   /webhooks/signing-key                   the key signing per-task webhook_url deliveries
GET    /webhooks/{id}                          one endpoint
DELETE /webhooks/{id}                          remove it (204)
POST   /webhooks/{id}:rotate-secret            a new key; the old one signs beside it for 24 h
GET    /webhooks/{id}/deliveries               its deliveries and every attempt, newest first
POST   /webhooks/deliveries/{id}:replay        send a delivery again (202)
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, providers
from shared.api.dispatch import route_of
from shared.config import get_settings


@functions_framework.http
@http.endpoint
def webhooks(request: flask.Request) -> flask.Response:  # noqa: PLR0911 - one answer per route
    operation = route_of(request, "webhooks", root="/webhooks").operation_id
    tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
    service = providers.endpoint_service()
    if operation == "createWebhook":
        return _created(service.register(tenant_id, http.read_json_body(request)))
    if operation == "listWebhooks":
        return http.json_response(service.list(tenant_id, request.args.to_dict()))
    if operation == "createSigningKey":
        # A JSON object, as the document says; `{}` asks for a v1 key.
        return _created(service.create_signing_key(tenant_id, http.read_json_body(request)))
    # The id in /webhooks/{id}, ...{id}:action, ...{id}/deliveries or ...deliveries/{id}:replay.
    some_id = _path_id(request.path, operation)
    if operation == "replayWebhookDelivery":
        answer, dispatched = service.replay(tenant_id, some_id)
        if not dispatched:
            answer["dispatch"] = "deferred"  # the sweep sends it within a minute
        return http.json_response(answer, 202)
    if operation == "rotateWebhookSecret":
        return http.json_response(service.rotate(tenant_id, some_id), 200, NO_STORE)
    if operation == "listWebhookDeliveries":
        return http.json_response(service.deliveries(tenant_id, some_id, request.args.to_dict()))
    if operation == "deleteWebhook":
        service.delete(tenant_id, some_id)
        return flask.Response(status=204)
    return http.json_response(service.get(tenant_id, some_id))


def _path_id(path: str, operation: str) -> str:
    segments = path.rstrip("/").split("/")
    segment = segments[-2] if operation == "listWebhookDeliveries" else segments[-1]
    return segment.partition(":")[0]


# Answers that carry a key (shown once) must not be kept by any cache.
NO_STORE = {"Cache-Control": "no-store"}


def _created(answer: dict[str, object]) -> flask.Response:
    location = f"{get_settings().public_base_url}/webhooks/{answer['id']}"
    return http.json_response(answer, 201, {"Location": location, **NO_STORE})
