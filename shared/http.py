"""HTTP edge: errors to RFC 7807 problem+json, JSON bodies, bearer tokens. One place."""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from shared import logs
from shared.config import get_settings
from shared.errors import (
    AIAError,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from shared.limits import loads_bounded

log = logging.getLogger("aia.http")

MAX_BODY_BYTES = 1024 * 1024
PROBLEM_JSON = "application/problem+json"

Handler = Callable[[flask.Request], flask.Response]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def problem_response(error: AIAError, instance: str | None = None) -> flask.Response:
    body = error.problem()
    if instance:
        body["instance"] = instance
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="aia"' + (
            ', error="invalid_token"' if error.extra.get("token_given") else ""
        )
        body.pop("token_given", None)
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, RateLimited):
        headers.update(error.headers)  # RateLimit-Policy and RateLimit (shared.flow)
        headers["Retry-After"] = str(error.retry_after_s)
    return flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=error.status,
        mimetype=PROBLEM_JSON,
        headers=headers,
    )


def endpoint(handler: Handler) -> Handler:
    """Wrap an HTTP entry point: a SERVER span, logging context, every error as problem+json."""
    return _wrap(handler, traced=True)


def probe_endpoint(handler: Handler) -> Handler:
    """`endpoint` without a span: health probes and scrapes, called every few seconds,
    would bury the traces worth reading (and the health check's cold start stays free
    of the tracing SDK)."""
    return _wrap(handler, traced=False)


def _wrap(handler: Handler, *, traced: bool) -> Handler:
    # functions-framework loads main.py inside its Flask app's context. A request its
    # own routing refuses (a path with a newline never matches its /<path:path>
    # rule) would get Flask's HTML page: the function's app answers problem+json too.
    if flask.has_app_context():
        flask.current_app.register_error_handler(HTTPException, _routing_problem)

    def answer(request: flask.Request) -> flask.Response:
        try:
            return handler(request)
        except AIAError as exc:
            level = logging.ERROR if exc.status >= 500 else logging.INFO
            log.log(level, "request failed: %s", exc.detail, extra={"problem": exc.code})
            return problem_response(exc, request.path)
        except Exception as exc:
            if _is_transient_google_error(exc) or _is_exhausted_transaction(exc):
                log.exception("dependency call failed")
                error = Unavailable("a storage or messaging dependency failed; retry shortly")
                return problem_response(error, request.path)
            log.exception("unhandled error")
            return problem_response(AIAError("an unexpected error occurred"), request.path)

    @functools.wraps(handler)
    def wrapper(request: flask.Request) -> flask.Response:
        try:
            settings = get_settings()
            logs.configure(settings.log_level, settings.project)
            logs.bind(logs.trace_id_from_headers(request.headers), path=request.path)
        except AIAError as exc:  # a configuration error: no span without settings
            return problem_response(exc, request.path)
        if not traced:
            return answer(request)
        from shared import tracing

        with tracing.span(
            f"{request.method} {handler.__name__}",
            kind="SERVER",
            parent=tracing.extract({"traceparent": request.headers.get("traceparent", "")}),
            attributes={
                "http.request.method": request.method,
                "url.path": request.path,
                "faas.trigger": "http",
            },
        ) as current:
            response = answer(request)
            current.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                from opentelemetry.trace import Status, StatusCode

                current.set_status(Status(StatusCode.ERROR))
            return response

    return wrapper


def _routing_problem(exc: HTTPException) -> flask.Response:
    path = flask.request.path if flask.has_request_context() else None
    if exc.code == 405:
        allowed = tuple(getattr(exc, "valid_methods", None) or ())
        return problem_response(MethodNotAllowed("method not allowed", allowed=allowed), path)
    error: AIAError
    if exc.code == 404:
        error = NotFound(f"no route for {path}")
    elif exc.code == 413:
        error = PayloadTooLarge("the request is too large")
    elif exc.code is not None and exc.code >= 500:
        error = AIAError("an unexpected error occurred")
    else:
        error = BadRequest(exc.description or "bad request")
    return problem_response(error, path)


# Transient Google failures, by class name so this edge never imports Google libraries.
_TRANSIENT = frozenset(
    {
        "ServiceUnavailable",
        "DeadlineExceeded",
        "InternalServerError",
        "Aborted",
        "TooManyRequests",
        "ResourceExhausted",
        "RetryError",
        "TransportError",
        "GatewayTimeout",
    }
)


def _is_transient_google_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    google = module.startswith(("google.api_core", "google.auth", "grpc"))
    return google and type(exc).__name__ in _TRANSIENT


def _is_exhausted_transaction(exc: BaseException) -> bool:
    # google-cloud-firestore raises a plain ValueError once contention has used up a
    # transaction's retries: contention, so worth a retry, not a server bug.
    return type(exc) is ValueError and str(exc).startswith("Failed to commit transaction")


def require_path(request: flask.Request, *paths: str) -> None:
    if request.path.rstrip("/") not in {p.rstrip("/") for p in paths}:
        raise NotFound(f"no route for {request.path}")


def require_method(request: flask.Request, *allowed: str) -> None:
    if request.method not in allowed:
        raise MethodNotAllowed(f"{request.method} is not allowed here", allowed=allowed)


def read_json_body(request: flask.Request, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Parse a JSON body of at most `max_bytes`, reading no more than that."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {max_bytes}")
    mimetype = request.mimetype or "application/json"
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"expected application/json, got {mimetype}")
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"body exceeds the limit of {max_bytes} bytes")
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        return loads_bounded(raw, "body")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc


def bearer_token(request: flask.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must use the Bearer scheme", token_given=True)
    return token.strip()


def require_operator(request: flask.Request) -> None:
    """Operators' endpoints: the metrics bearer token when one is configured."""
    token = get_settings().metrics_token
    if token is None:
        return  # local development: no token configured, nothing to guard
    given = bearer_token(request)
    if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("this endpoint needs the operators' metrics token", token_given=True)
