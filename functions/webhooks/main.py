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

import re

import flask
import functions_framework

from shared import http, providers
from shared.config import get_settings
from shared.errors import NotFound

ROUTES: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    ("endpoints", re.compile(r"/(?:webhooks)?"), ("GET", "POST")),
    ("signing-key", re.compile(r"/webhooks/signing-key"), ("POST",)),
    ("replay", re.compile(r"/webhooks/deliveries/(?P<id>[^/:]+):replay"), ("POST",)),
    ("rotate", re.compile(r"/webhooks/(?P<id>[^/:]+):rotate-secret"), ("POST",)),
    ("deliveries", re.compile(r"/webhooks/(?P<id>[^/:]+)/deliveries"), ("GET",)),
    ("endpoint", re.compile(r"/webhooks/(?P<id>[^/:]+)"), ("GET", "DELETE")),
)


@functions_framework.http
@http.endpoint
def webhooks(request: flask.Request) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    for route, pattern, methods in ROUTES:
        match = pattern.fullmatch(path)
        if match is not None:
            http.require_method(request, *methods)
            tenant_id = providers.api_keys().authenticate(http.bearer_token(request))
            return _serve(route, match.groupdict().get("id", ""), tenant_id, request)
    raise NotFound(f"no route for {request.path}")


def _serve(  # noqa: PLR0911 - one answer per route
    route: str, some_id: str, tenant_id: str, request: flask.Request
) -> flask.Response:
    service = providers.endpoint_service()
    if route == "endpoints":
        if request.method == "POST":
            return _created(service.register(tenant_id, http.read_json_body(request)))
        return http.json_response(service.list(tenant_id, request.args.to_dict()))
    if route == "signing-key":
        # Every field has a default: an empty body asks for a v1 key.
        body = {} if not request.content_length else http.read_json_body(request)
        return _created(service.create_signing_key(tenant_id, body))
    if route == "replay":
        answer, dispatched = service.replay(tenant_id, some_id)
        if not dispatched:
            answer["dispatch"] = "deferred"  # the sweep sends it within a minute
        return http.json_response(answer, 202)
    if route == "rotate":
        return http.json_response(service.rotate(tenant_id, some_id), 200, NO_STORE)
    if route == "deliveries":
        return http.json_response(service.deliveries(tenant_id, some_id, request.args.to_dict()))
    if request.method == "DELETE":
        service.delete(tenant_id, some_id)
        return flask.Response(status=204)
    return http.json_response(service.get(tenant_id, some_id))


# Answers that carry a key (shown once) must not be kept by any cache.
NO_STORE = {"Cache-Control": "no-store"}


def _created(answer: dict[str, object]) -> flask.Response:
    location = f"{get_settings().public_base_url}/webhooks/{answer['id']}"
    return http.json_response(answer, 201, {"Location": location, **NO_STORE})
