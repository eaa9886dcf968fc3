"""Count what functions ask of Firestore and Pub/Sub, and what Pub/Sub and clients ask of them.

Two small forwarders, used only while counting (each adds a hop, so latency
figures are never taken through them):

- `RpcCounter`, a gRPC proxy between functions and the emulators. Generic
  handlers relay raw bytes, every call as a bidirectional stream (on the wire a
  unary call is a stream of one message), so it needs no generated stubs; it
  decodes just enough of Firestore's and Pub/Sub's messages to count writes,
  documents read and published bytes. Functions reach it through
  `FIRESTORE_EMULATOR_HOST` / `PUBSUB_EMULATOR_HOST`.
- `HttpCounter`, an HTTP forwarder in front of one function, counting its
  invocations and their wall time (what request-based billing charges for).
  Push subscriptions and the benchmark's client are pointed at it.

The bookkeeping (`Tally`, `RequestTally`) is separate from the transport so it
can be tested on hand-made messages.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIRESTORE = "/google.firestore.v1.Firestore/"
PUBLISHER = "/google.pubsub.v1.Publisher/"
SUBSCRIBER = "/google.pubsub.v1.Subscriber/"
# What the issue counts; every other method is counted too, under its own name.
FIRESTORE_METHODS = (
    "Commit",
    "BatchGetDocuments",
    "GetDocument",
    "RunQuery",
    "RunAggregationQuery",
    "BeginTransaction",
    "Rollback",
    "BatchWrite",
)
# Pub/Sub bills every publish and every delivery as at least this many bytes.
PUBSUB_MIN_BILLED_BYTES = 1000
_UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@functools.cache
def _messages() -> dict[str, Any]:
    """Protobuf classes of the messages decoded, imported on first use (gRPC is heavy)."""
    from google.cloud.firestore_v1.types import firestore as fs
    from google.pubsub_v1 import types as ps

    return {
        "Commit": fs.CommitRequest.pb(),
        "BatchWrite": fs.BatchWriteRequest.pb(),
        "BatchGetDocuments": fs.BatchGetDocumentsResponse.pb(),
        "RunQuery": fs.RunQueryResponse.pb(),
        "RunAggregationQuery": fs.RunAggregationQueryResponse.pb(),
        "Publish": ps.PublishRequest.pb(),
    }


def short_name(method: str) -> str:
    """`/google.firestore.v1.Firestore/Commit` -> `Firestore/Commit`."""
    service, _, name = method.strip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}"


@dataclass
class Tally:
    """Counts of calls and of what they carried. Not thread-safe: `RpcCounter` locks around it."""

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of calls, at the proxy
    writes: int = 0  # Write messages in Commit and BatchWrite requests
    creates: int = 0  # ... of which must not exist before (`create`)
    conditional: int = 0  # ... of which carry an update-time precondition
    transforms: int = 0  # field transforms (Increment etc.) across those writes
    documents_read: int = 0  # documents found by BatchGetDocuments or GetDocument, or queried
    missing_read: int = 0  # gets of documents that do not exist (GetDocument: NOT_FOUND)
    aggregations: int = 0  # aggregation results returned
    published: int = 0  # Pub/Sub messages published
    published_bytes: int = 0  # data + attribute bytes of those messages
    billed_publish_bytes: int = 0  # with Pub/Sub's per-message minimum

    def record_request(self, method: str, raw: bytes) -> None:
        name = method.rpartition("/")[2]
        if method.startswith(FIRESTORE) and name in ("Commit", "BatchWrite"):
            request = _messages()[name].FromString(raw)
            for write in request.writes:
                self.writes += 1
                self.transforms += len(write.update_transforms)
                if write.HasField("transform"):
                    self.transforms += len(write.transform.field_transforms)
                if write.HasField("current_document"):
                    condition = write.current_document
                    if condition.HasField("exists") and not condition.exists:
                        self.creates += 1
                    elif condition.HasField("update_time"):
                        self.conditional += 1
        elif method.startswith(PUBLISHER) and name == "Publish":
            request = _messages()["Publish"].FromString(raw)
            for message in request.messages:
                size = len(message.data) + len(message.ordering_key)
                size += sum(len(k) + len(v) for k, v in message.attributes.items())
                self.published += 1
                self.published_bytes += size
                self.billed_publish_bytes += max(size, PUBSUB_MIN_BILLED_BYTES)

    def record_response(self, method: str, raw: bytes) -> None:
        if not method.startswith(FIRESTORE):
            return
        name = method.rpartition("/")[2]
        if name == "BatchGetDocuments":
            response = _messages()[name].FromString(raw)
            if response.HasField("found"):
                self.documents_read += 1
            elif response.missing:
                self.missing_read += 1
        elif name == "GetDocument":
            self.documents_read += 1  # its only answer is the document
        elif name == "RunQuery":
            if _messages()[name].FromString(raw).HasField("document"):
                self.documents_read += 1
        elif name == "RunAggregationQuery" and _messages()[name].FromString(raw).HasField("result"):
            self.aggregations += 1

    def record_call(self, method: str) -> None:
        self.calls[short_name(method)] += 1

    def record_seconds(self, method: str, seconds: float) -> None:
        name = short_name(method)
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def record_error(self, method: str, code: str) -> None:
        self.errors[f"{short_name(method)} {code}"] += 1
        if method == FIRESTORE + "GetDocument" and code == "NOT_FOUND":
            self.missing_read += 1  # billed as a read, as a BatchGetDocuments miss is

    def copy(self) -> Tally:
        return Tally(
            calls=Counter(self.calls),
            errors=Counter(self.errors),
            seconds=dict(self.seconds),
            **{name: getattr(self, name) for name in _SCALARS},
        )

    def minus(self, before: Tally) -> Tally:
        """What happened since `before` was taken."""
        return Tally(
            calls=_sub(self.calls, before.calls),
            errors=_sub(self.errors, before.errors),
            seconds={
                k: v - before.seconds.get(k, 0.0)
                for k, v in self.seconds.items()
                if v - before.seconds.get(k, 0.0) > 1e-9
            },
            **{name: getattr(self, name) - getattr(before, name) for name in _SCALARS},
        )

    def commits(self) -> int:
        return self.calls["Firestore/Commit"] + self.calls["Firestore/BatchWrite"]

    def reads(self) -> int:
        """Billed document reads: found or missing gets, query results, aggregation results."""
        return self.documents_read + self.missing_read + self.aggregations

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": dict(sorted(self.calls.items())),
            "errors": dict(sorted(self.errors.items())),
            "seconds": dict(sorted(self.seconds.items())),
            **{name: getattr(self, name) for name in _SCALARS},
            "commits": self.commits(),
            "reads": self.reads(),
        }


_SCALARS = (
    "writes",
    "creates",
    "conditional",
    "transforms",
    "documents_read",
    "missing_read",
    "aggregations",
    "published",
    "published_bytes",
    "billed_publish_bytes",
)


def _sub(after: Counter[str], before: Counter[str]) -> Counter[str]:
    diff = Counter(after)
    diff.subtract(before)
    return Counter({k: v for k, v in diff.items() if v})


def _clean_metadata(metadata: Any) -> list[tuple[str, Any]]:
    """Metadata safe to pass on: gRPC sets its own pseudo-headers, user agent and grpc-*."""
    return [
        (key, value)
        for key, value in (metadata or ())
        if not key.startswith(":")
        and key != "user-agent"
        and (not key.startswith("grpc-") or key == "grpc-status-details-bin")
    ]


class RpcCounter:
    """A counting gRPC proxy: `upstreams` maps a method prefix to the emulator serving it."""

    def __init__(self, upstreams: Mapping[str, str], host: str = "127.0.0.1") -> None:
        import grpc

        self._grpc = grpc
        self._lock = threading.Lock()
        self._tally = Tally()
        self._channels = {
            prefix: grpc.insecure_channel(target, options=_UNLIMITED)
            for prefix, target in upstreams.items()
        }
        # Streaming calls (listeners) hold a thread each for as long as they are open.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=64, thread_name_prefix="rpc-counter"),
            handlers=[_Forward(self)],
            options=_UNLIMITED,
        )
        port = self._server.add_insecure_port(f"{host}:0")
        self.address = f"{host}:{port}"

    def start(self) -> RpcCounter:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=1).wait()
        for channel in self._channels.values():
            channel.close()

    def snapshot(self) -> Tally:
        with self._lock:
            return self._tally.copy()

    def channel_for(self, method: str) -> Any | None:
        for prefix, channel in self._channels.items():
            if method.startswith(prefix):
                return channel
        return None

    def _note(self, record: Any, *args: Any) -> None:
        with self._lock:
            record(self._tally, *args)

    def relay(self, method: str, channel: Any, requests: Iterator[bytes], context: Any) -> Any:
        grpc = self._grpc
        self._note(Tally.record_call, method)
        started = time.perf_counter()

        def upstream_requests() -> Iterator[bytes]:
            for raw in requests:
                self._note(Tally.record_request, method, raw)
                yield raw

        remaining = context.time_remaining()
        call = channel.stream_stream(method)(
            upstream_requests(),
            metadata=_clean_metadata(context.invocation_metadata()),
            timeout=remaining if remaining is not None and remaining < 1e6 else None,
        )
        context.add_callback(call.cancel)
        try:
            context.send_initial_metadata(_clean_metadata(call.initial_metadata()))
            for raw in call:
                self._note(Tally.record_response, method, raw)
                yield raw
            context.set_trailing_metadata(_clean_metadata(call.trailing_metadata()))
            self._note(Tally.record_seconds, method, time.perf_counter() - started)
        except grpc.RpcError as exc:
            # AlreadyExists and FailedPrecondition are answers AIA relies on: pass them on as is.
            # CANCELLED is the client hanging up once it has what it wanted (a single get
            # cancels its stream after the document): not an error of the call.
            if exc.code() is not grpc.StatusCode.CANCELLED:
                self._note(Tally.record_error, method, exc.code().name)
            context.set_trailing_metadata(_clean_metadata(exc.trailing_metadata()))
            context.abort(exc.code(), exc.details() or "")


class _Forward:
    """grpc.GenericRpcHandler: every method becomes a raw-bytes bidirectional relay."""

    def __init__(self, counter: RpcCounter) -> None:
        self._counter = counter

    def service(self, details: Any) -> Any:
        channel = self._counter.channel_for(details.method)
        if channel is None:
            return None  # UNIMPLEMENTED: nothing is known to serve it
        relay = functools.partial(self._counter.relay, details.method, channel)
        return self._counter._grpc.stream_stream_rpc_method_handler(relay)


# --- HTTP ---------------------------------------------------------------------


@dataclass
class RequestTally:
    """Invocations of one function as a caller saw them: count, statuses, wall seconds."""

    statuses: Counter[int] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    failures: int = 0  # the upstream did not answer at all

    @property
    def count(self) -> int:
        return sum(self.statuses.values()) + self.failures

    def record(self, status: int, seconds: float) -> None:
        self.statuses[status] += 1
        self.seconds.append(seconds)

    def copy(self) -> RequestTally:
        return RequestTally(Counter(self.statuses), list(self.seconds), self.failures)

    def minus(self, before: RequestTally) -> RequestTally:
        return RequestTally(
            _int_sub(self.statuses, before.statuses),
            self.seconds[len(before.seconds) :],
            self.failures - before.failures,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "failures": self.failures,
            "wall_s_total": sum(self.seconds),
        }


def _int_sub(after: Counter[int], before: Counter[int]) -> Counter[int]:
    diff = Counter(after)
    diff.subtract(before)
    return Counter({k: v for k, v in diff.items() if v})


# Headers that describe one connection, not the message (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class _Relay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it every answer waits for the client's delayed ACK (~40 ms).
    disable_nagle_algorithm = True
    server: _CountingServer

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        host, _, port = self.server.upstream.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        started = time.perf_counter()
        self.server.entered()
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.server.note_failure()
            self.send_error(502)
            return
        finally:
            conn.close()
            self.server.left()
        self.server.note(resp.status, time.perf_counter() - started)
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815 - http.server dispatches on these names

    def log_message(self, format: str, *args: Any) -> None:
        pass  # counted, not logged


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A caller closing its keep-alive connection is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tally = RequestTally()
        self.lock = threading.Lock()
        self.answered = threading.Condition(self.lock)
        self.ok = 0  # answers with a 2xx status
        self.in_flight = 0
        self.peak = 0  # most requests in flight at once since the last reset
        super().__init__(("127.0.0.1", 0), _Relay)

    def entered(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def left(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def note(self, status: int, seconds: float) -> None:
        with self.lock:
            self.tally.record(status, seconds)
            if 200 <= status < 300:
                self.ok += 1
                self.answered.notify_all()

    def note_failure(self) -> None:
        with self.lock:
            self.tally.failures += 1


class HttpCounter:
    """Forwards every request to `upstream` (host:port); request bodies need a Content-Length."""

    def __init__(self, upstream: str) -> None:
        self._server = _CountingServer(upstream)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> HttpCounter:
        self._thread.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> RequestTally:
        with self._server.lock:
            return self._server.tally.copy()

    def answered_ok(self) -> int:
        """How many requests were answered with a 2xx status so far."""
        with self._server.lock:
            return self._server.ok

    def wait_answered_ok(self, count: int, timeout_s: float) -> None:
        """Until `count` requests in all were answered with a 2xx status."""
        with self._server.answered:
            if not self._server.answered.wait_for(lambda: self._server.ok >= count, timeout_s):
                raise TimeoutError(f"{self._server.ok} of {count} requests answered 2xx")

    def take_peak(self) -> int:
        """Most requests that were in flight at once since the last call."""
        with self._server.lock:
            peak, self._server.peak = self._server.peak, self._server.in_flight
            return peak
