"""Structured JSON logs in Cloud Logging's format, with the request's trace."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("aia_trace", default=None)
_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aia_log_fields", default=None
)
# (trace id, span id) of the current span (shared.tracing), over the request's trace.
_span: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "aia_log_span", default=(None, None)
)

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line: severity, message, trace and any `extra=` fields."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        span_trace, span_id = _span.get()
        trace = span_trace or _trace.get()
        if trace and self.project:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}"
        if span_id:
            entry["logging.googleapis.com/spanId"] = span_id
        entry.update(_fields.get() or {})
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def trace_id_from_headers(headers: Any) -> str | None:
    """Trace id from W3C `traceparent` or Google's `X-Cloud-Trace-Context`."""
    traceparent = headers.get("traceparent")
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            return str(parts[1])
    cloud = headers.get("X-Cloud-Trace-Context")
    if cloud:
        return str(cloud.split("/", 1)[0]) or None
    return None


def bind(trace: str | None = None, **fields: Any) -> None:
    """Attach a trace id and fields to every log line of the current request."""
    _trace.set(trace)
    _fields.set(fields)


def bind_span(trace: str | None, span_id: str | None) -> tuple[str | None, str | None]:
    """Make a span's ids those of the log lines that follow; returns what they were."""
    previous = _span.get()
    _span.set((trace, span_id))
    return previous


def restore_span(previous: tuple[str | None, str | None]) -> None:
    _span.set(previous)


_configured = False


def configure(level: str = "INFO", project: str | None = None) -> None:
    """Install the JSON handler on the root logger once per instance."""
    global _configured  # noqa: PLW0603 - one handler per process, set on first use
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(project))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    _configured = True
