"""metrics: `GET /metrics` as Prometheus text, or the same figures as JSON when asked."""

from __future__ import annotations

import flask
import functions_framework

from shared import http
from shared.operations import metrics as task_metrics

JSON = "application/json"
NO_CACHE = {"Cache-Control": "no-store", "Vary": "Accept"}


@functions_framework.http
@http.probe_endpoint
def metrics(request: flask.Request) -> flask.Response:
    # "/" too: a function's own URL reaches it at the root, the gateway at /metrics.
    http.require_path(request, "/", "/metrics")
    http.require_method(request, "GET", "HEAD")
    # Every tenant's volume is in here: operators (and their scrapers) only.
    http.require_operator(request)
    snapshot = task_metrics.collect_current()
    # Text wins ties and wildcards: Prometheus and curl get the exposition format.
    if request.accept_mimetypes.best_match(["text/plain", JSON], default="text/plain") == JSON:
        return http.json_response(task_metrics.render_json(snapshot), 200, NO_CACHE)
    from prometheus_client import CONTENT_TYPE_LATEST

    return flask.Response(
        task_metrics.render_prometheus(snapshot),
        200,
        content_type=CONTENT_TYPE_LATEST,
        headers=NO_CACHE,
    )
