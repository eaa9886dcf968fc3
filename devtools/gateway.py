"""A small reverse proxy that serves every function under one base URL, as production does.

Routing follows production's paths; the original path and query are forwarded
unchanged because the functions route on them. Bodies are streamed both ways.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("aia.gateway")

CHUNK = 64 * 1024
UPSTREAM_TIMEOUT_S = 120.0
# How much of a refused request body is still read and dropped so its sender sees the answer.
DRAIN_LIMIT = 64 * 1024 * 1024
# Headers that describe one connection, not the message (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_TASK_ID = re.compile(r"^/tasks/[^/]+/?$")


def route(method: str, path: str) -> str | None:  # noqa: PLR0911 - one answer per route
    """Name of the function serving `method path`, or None when nothing does."""
    path = path if path == "/" else path.rstrip("/") or "/"
    if path in ("/", "/health"):
        return "health"
    if path == "/metrics":
        return "metrics"
    if path == "/tasks/submit":
        return "submit_task"
    if path == "/tasks":
        # One path, two functions: creating is submit_task, listing is task_status.
        return "submit_task" if method == "POST" else "task_status"
    if path.startswith("/tasks/") and path.endswith(":replay"):
        return "submit_task"
    if _TASK_ID.match(path):
        return "task_status"
    if path in ("/usage", "/usage/ledger"):
        return "usage"
    return None


def problem(status: int, title: str, detail: str, instance: str) -> bytes:
    """An RFC 7807 body in the service's own shape."""
    slug = title.lower().replace(" ", "-")
    body = {
        "type": f"https://aia.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    return json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    """Proxies one client connection; keep-alive is kept when the exchange allows it."""

    protocol_version = "HTTP/1.1"
    server_version = "aia-gateway"
    # Idle keep-alive connections must not hold a thread forever.
    timeout = 120
    # Headers and body go out in separate writes; with Nagle's algorithm the second
    # waits for the client's delayed ACK, adding ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: GatewayServer

    def do_GET(self) -> None:
        self._proxy()

    # http.server dispatches on these exact names.
    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s - %s", self.address_string(), format % args)

    # --- proxying -----------------------------------------------------------

    def _proxy(self) -> None:
        target = urlsplit(self.path)
        path = target.path or "/"
        name = route(self.command, path)
        if name is None:
            self._drain_body()
            self._send_problem(404, "Not found", f"no route for {self.command} {path}", path)
            return
        upstream = self.server.upstreams.get(name)
        if upstream is None:
            self._drain_body()
            self._send_problem(
                503, "Dependency unavailable", f"function {name} is not running", path
            )
            return
        forward_path = path + (f"?{target.query}" if target.query else "")
        host, _, port = upstream.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=UPSTREAM_TIMEOUT_S)
        try:
            try:
                self._send_request(conn, forward_path)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                # Nothing sent to the client yet: answer honestly that the hop failed.
                self.close_connection = True
                log.warning("upstream %s (%s) failed: %r", name, upstream, exc)
                self._send_problem(
                    502, "Bad gateway", f"function {name} did not answer: {exc!r}", path
                )
                return
            self._relay_response(resp)
        except (OSError, http.client.HTTPException) as exc:
            # The client went away or the upstream broke mid-body: nothing left to answer.
            self.close_connection = True
            log.warning("proxying %s %s to %s broke: %r", self.command, path, name, exc)
        finally:
            conn.close()

    def _send_request(self, conn: http.client.HTTPConnection, forward_path: str) -> None:
        conn.putrequest(self.command, forward_path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            lower = key.lower()
            # Expect was answered by this hop already; X-Forwarded-* are rebuilt below.
            if lower in HOP_BY_HOP or lower == "expect" or lower.startswith("x-forwarded-"):
                continue
            conn.putheader(key, value)
        client_ip = self.client_address[0]
        prior = self.headers.get("X-Forwarded-For")
        conn.putheader("X-Forwarded-For", f"{prior}, {client_ip}" if prior else client_ip)
        conn.putheader("X-Forwarded-Proto", "http")
        if host := self.headers.get("Host"):
            conn.putheader("X-Forwarded-Host", host)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        pieces = (
            _read_chunked(self.rfile)
            if chunked
            else _read_exactly(self.rfile, self._content_length())
        )
        # Errors reading the client propagate; errors writing upstream are handled here.
        upstream_reading = True
        drained = 0
        for piece in pieces:
            if upstream_reading:
                try:
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                except (BrokenPipeError, ConnectionResetError):
                    # The function answered (413, say) before reading everything.
                    upstream_reading = False
                    self.close_connection = True
                continue
            # Keep reading (and dropping) the client's body: closing on unread data
            # would reset the connection before the client reads the early answer.
            drained += len(piece)
            if drained > DRAIN_LIMIT:
                return
        if chunked and upstream_reading:
            conn.send(b"0\r\n\r\n")

    def _relay_response(self, resp: http.client.HTTPResponse) -> None:
        self.log_request(resp.status)  # the access log (send_response_only writes none)
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        bodyless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        length = resp.getheader("Content-Length")
        chunked = not bodyless and length is None
        if chunked:
            # Unknown length: re-chunk so the client connection can stay open.
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if bodyless:
            return
        while piece := resp.read1(CHUNK):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # --- helpers ------------------------------------------------------------

    def _content_length(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length", "0")))
        except ValueError:
            return 0

    def _drain_body(self) -> None:
        """Discard a request body we will not forward, so keep-alive stays in sync."""
        with contextlib.suppress(OSError):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                for _ in _read_chunked(self.rfile):
                    pass
            else:
                for _ in _read_exactly(self.rfile, self._content_length()):
                    pass

    def _send_problem(self, status: int, title: str, detail: str, instance: str) -> None:
        body = problem(status, title, detail, instance)
        self.log_request(status)
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _read_exactly(stream: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining > 0:
        piece = stream.read(min(CHUNK, remaining))
        if not piece:
            raise ConnectionResetError("client closed before sending its whole body")
        remaining -= len(piece)
        yield piece


def _read_chunked(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """Decode an HTTP/1.1 chunked body; trailers are read and dropped."""
    while True:
        size_line = stream.readline(1024)
        if not size_line:
            raise ConnectionResetError("client closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            return
        yield from _read_exactly(stream, size)
        stream.readline(8)  # the CRLF after each chunk


class GatewayServer(ThreadingHTTPServer):
    """Binds on construction (so a taken port fails early); `upstreams` maps names to host:port."""

    daemon_threads = True
    # A burst of concurrent clients must not overflow the accept queue.
    request_queue_size = 256

    def __init__(self, host: str, port: int, upstreams: Mapping[str, str] | None = None) -> None:
        self.upstreams: dict[str, str] = dict(upstreams or {})
        self.host = host
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread; stop with `shutdown()` then `server_close()`."""
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="gateway", daemon=True
        )
        thread.start()
        return thread
