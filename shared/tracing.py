"""One trace from submit to webhook: OpenTelemetry spans, W3C `traceparent` across hops.

- An HTTP function continues the request's `traceparent` (or starts a trace) in
  a SERVER span; a publish runs in a PRODUCER span whose context goes into the
  message's attributes, as `traceparent` and as the Google client's own
  `googclient_traceparent`; the worker continues it in a CONSUMER span (the
  messaging conventions' attributes), and the handler's run nests under that.
- A task stores the `traceparent` it was submitted under, so what publishes it
  later (the redispatch sweep, the timer tick, a join's continuation) and its
  children and webhook deliveries stay in the same trace.
- Export (`AIA_TRACE_EXPORTER`): `none` (propagation only: the OpenTelemetry
  API without its SDK, which costs a cold start ~100 ms), `file` (JSON lines
  under `AIA_TRACE_DIR`, the local stack's), `console`, or `gcp` (Cloud Trace).
  Spans leave through a BatchSpanProcessor's thread: a request never waits on
  an export.
- Every log line carries the current trace and span ids (`shared.logs`).

The SDK and exporters load on the first traced request, never at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from shared import logs
from shared.config import get_settings

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("aia.tracing")

TRACEPARENT = "traceparent"
# The attribute google-cloud-pubsub's own OpenTelemetry support reads and writes.
GOOGLE_CLIENT_TRACEPARENT = "googclient_traceparent"
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16

_lock = threading.Lock()
_tracer: Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider, once made


def parse(traceparent: str | None) -> tuple[str, str] | None:
    """(trace id, span id) of a valid W3C traceparent, else None."""
    match = _TRACEPARENT_RE.fullmatch(traceparent or "")
    if match is None or match[1] == _INVALID_TRACE or match[2] == _INVALID_SPAN:
        return None
    return match[1], match[2]


def trace_id_of(traceparent: str | None) -> str | None:
    parsed = parse(traceparent)
    return parsed[0] if parsed else None


def tracer() -> Tracer:
    """This instance's tracer; the SDK and its exporter are set up on first use."""
    global _tracer  # noqa: PLW0603 - one provider per instance, made on first use
    if _tracer is None:
        with _lock:
            if _tracer is None:
                try:
                    _tracer = _make_tracer()
                except Exception:  # tracing must never fail a request
                    # Say, no credentials for Cloud Trace: contexts still pass through.
                    log.exception("trace exporter unavailable; spans are not recorded")
                    from opentelemetry import trace

                    _tracer = trace.NoOpTracer()
    return _tracer


def install(provider: Any | None) -> None:
    """Use this TracerProvider (an SDK one, say with an in-memory exporter) from now on;
    None goes back to the one the settings describe, made on next use."""
    global _tracer, _provider  # noqa: PLW0603 - the instance's provider, replaced whole
    with _lock:
        _provider = provider
        _tracer = provider.get_tracer("aia") if provider is not None else None


def _make_tracer() -> Tracer:
    from opentelemetry import trace

    settings = get_settings()
    if settings.trace_exporter == "none":
        # The API alone: spans do not record, but incoming contexts pass through.
        return trace.get_tracer("aia")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    function = os.environ.get("K_SERVICE") or os.environ.get("FUNCTION_TARGET") or "aia"
    resource = Resource.create(
        {
            "service.name": "aia",
            "service.version": settings.version,
            "faas.name": function,
            "cloud.provider": "gcp",
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio))
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings.trace_exporter)))
    global _provider  # noqa: PLW0603 - made once, under the lock
    _provider = provider
    return provider.get_tracer("aia", settings.version)


def _exporter(kind: str) -> Any:
    settings = get_settings()
    if kind == "gcp":
        return _BuiltOnFirstExport(_cloud_trace_exporter)
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if kind == "file":
        directory = settings.trace_dir
        assert directory is not None  # the settings refuse file without a directory
        directory.mkdir(parents=True, exist_ok=True)
        # One file per process: lines from several writers never interleave.
        out = (directory / f"spans-{os.getpid()}.jsonl").open("a", encoding="utf-8")
        return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    return ConsoleSpanExporter()


def _cloud_trace_exporter() -> Any:
    from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

    return CloudTraceSpanExporter(project_id=get_settings().project)  # type: ignore[no-untyped-call]


class _BuiltOnFirstExport:
    """An exporter made by the span processor's thread when it first exports.

    The Cloud Trace client (its import, credentials and channel) then never
    sits on a cold request's path: the first batch leaves seconds after it.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._exporter: Any = None
        self._failed = False

    def _get(self) -> Any:
        if self._exporter is None and not self._failed:
            try:
                self._exporter = self._build()
            except Exception:  # tracing must never fail the instance
                self._failed = True
                log.exception("trace exporter unavailable; spans are not recorded")
        return self._exporter

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        exporter = self._get()
        return SpanExportResult.FAILURE if exporter is None else exporter.export(spans)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        exporter = self._get()
        return True if exporter is None else bool(exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        if self._exporter is not None:
            self._exporter.shutdown()


def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def extract(carrier: Mapping[str, str] | None) -> Context | None:
    """The context a carrier (headers, message attributes) names, if any."""
    if not carrier:
        return None
    value = carrier.get(TRACEPARENT) or carrier.get(GOOGLE_CLIENT_TRACEPARENT)
    if parse(value) is None:
        return None
    return _propagator().extract({TRACEPARENT: value})  # type: ignore[no-any-return]


def current_traceparent() -> str | None:
    """The current span's context as a W3C traceparent, or None outside any trace."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def inject(attributes: MutableMapping[str, str]) -> None:
    """Name the current span in outgoing message attributes or headers."""
    traceparent = current_traceparent()
    if traceparent is not None:
        attributes[TRACEPARENT] = traceparent
        attributes[GOOGLE_CLIENT_TRACEPARENT] = traceparent


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: str = "INTERNAL",
    parent: Context | None = None,
    traceparent: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    link_parent: bool = False,
) -> Iterator[Span]:
    """A span, current while the block runs; log lines inside carry its ids.

    `traceparent` (a stored one) stands for `parent` when no live context is
    given; with neither, the span is a child of the current span, or a root.
    `link_parent` also links the parent, as the messaging conventions ask of a
    consumer span.
    """
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    if parent is None and traceparent is not None:
        parent = extract({TRACEPARENT: traceparent})
    links = []
    if link_parent and parent is not None:
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            links.append(Link(parent_context))
    with tracer().start_as_current_span(
        name,
        context=parent,
        kind=SpanKind[kind],
        attributes=dict(attributes or {}),
        links=links,
        record_exception=False,  # exception texts may quote task data
        set_status_on_exception=False,
    ) as current:
        previous = logs.bind_span(*(_ids(current) or (None, None)))
        try:
            yield current
        except BaseException as exc:
            # The error's type only: its text may quote task data.
            current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            logs.restore_span(previous)


def _ids(current: Span) -> tuple[str, str] | None:
    context = current.get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def set_attributes(current: Span, attributes: Mapping[str, Any]) -> None:
    """Attributes that become known inside the span (None values are left out)."""
    current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def flush(timeout_ms: int = 2000) -> bool:
    """Export what is queued (tests and the end of an instance; never on a request)."""
    if _provider is None:
        return True
    return bool(_provider.force_flush(timeout_ms))


@contextlib.contextmanager
def publishing(
    topic: str, attributes: MutableMapping[str, str], *, traceparent: str | None = None
) -> Iterator[Span]:
    """A PRODUCER span around one publish, named in the message's attributes.

    `traceparent` (a task's stored one) puts the publish in that task's trace,
    linked to the span that is current (the sweep or tick that found the task).
    """
    from opentelemetry import trace

    name = topic.rsplit("/", 1)[-1]
    stored = extract({TRACEPARENT: traceparent}) if traceparent else None
    sweep = trace.get_current_span().get_span_context()
    with span(
        f"send {name}",
        kind="PRODUCER",
        parent=stored,
        attributes={
            "messaging.system": "gcp_pubsub",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": name,
        },
    ) as current:
        if stored is not None and sweep.is_valid:
            current.add_link(sweep)
        inject(attributes)
        yield current
