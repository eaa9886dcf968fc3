"""deliver_webhooks: Pub/Sub push of webhook events and deliveries, and the sweep.

POST /push    a push delivery from the aia-webhook-events subscription: fan an
              event out, or attempt a delivery that is due (2xx acks, 503 nacks)
POST /sweep   from Cloud Scheduler: republish what is due, catch new endpoints up
"""

from __future__ import annotations

import flask
import functions_framework

from shared import events, http, providers
from shared.webhooks.models import WebhookMessage


@functions_framework.http
@http.endpoint
def deliver_webhooks(request: flask.Request) -> flask.Response:
    http.require_path(request, "/push", "/sweep")
    http.require_method(request, "POST")
    if request.path.rstrip("/") == "/sweep":
        swept = providers.webhook_sweeper().sweep()
        return http.json_response(
            {"events": swept.events, "deliveries": swept.deliveries, "caught_up": swept.caught_up}
        )
    try:
        body = http.read_json_body(request)
        events.handle_push(body, WebhookMessage, providers.deliverer().handle)
    except events.Redeliver:
        return flask.Response(status=503)  # Pub/Sub delivers it again with backoff
    return flask.Response(status=204)
