"""The dev gateway: routing table, RFC 7807 misses, faithful streaming proxying."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devtools.gateway import GatewayServer, route
from shared.api import routes
from tests.support.problems import problem_body

FUNCTIONS = ("health", "metrics", "submit_task", "task_status")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", "health"),
        ("GET", "/health", "health"),
        ("GET", "/metrics", "metrics"),
        ("POST", "/tasks/submit", "submit_task"),
        ("POST", "/tasks", "submit_task"),
        ("GET", "/tasks", "task_status"),
        ("GET", "/tasks/", "task_status"),
        ("GET", "/tasks/abc123", "task_status"),
        ("DELETE", "/tasks/abc123", "task_status"),
        # Under /tasks/ as the load balancer's prefix rule: task_status answers the 404.
        ("GET", "/tasks/a/b", "task_status"),
        ("GET", "/tasks/counts", "task_status"),
        ("POST", "/tasks/abc:replay", "submit_task"),
        ("GET", "/openapi.json", "openapi"),
        ("GET", "/dashboard", "dashboard"),
        ("GET", "/dashboard/app.js", "dashboard"),
        ("POST", "/schedules", "schedules"),
        ("GET", "/schedules", "schedules"),
        ("GET", "/schedules/abc123", "schedules"),
        ("POST", "/schedules/abc123:pause", "schedules"),
        ("DELETE", "/schedules/abc123", "schedules"),
        # Under /schedules/ as the load balancer's prefix rule: schedules answers the 404.
        ("GET", "/schedules/a/b", "schedules"),
        ("GET", "/schedulesx", None),
        ("POST", "/webhooks", "webhooks"),
        ("GET", "/webhooks/", "webhooks"),
        ("DELETE", "/webhooks/ep_1", "webhooks"),
        ("POST", "/webhooks/deliveries/dl_1:replay", "webhooks"),
        ("GET", "/webhooksx", None),
        ("GET", "/nope", None),
        ("GET", "/openapi.json/x", None),
        ("POST", "/projects/p/topics/t", None),
    ],
)
def test_route(method: str, path: str, expected: str | None) -> None:
    assert route(method, path) == expected


def test_routes_exactly_the_route_table() -> None:
    """Every route reaches its function; its other methods reach a function serving the path."""
    for r in routes.ROUTES:
        path = r.example_path()
        assert route(r.method, path) == r.function, (r.method, r.path)
        for other in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            served = routes.find(other, path)
            if served is not None:
                assert route(other, path) == served.function, (other, r.path)
            else:
                # Someone serving this path answers 405 with Allow.
                assert route(other, path) in {x.function for x in routes.ROUTES}, (other, path)


class _Upstream(BaseHTTPRequestHandler):
    """Answers with what it received; `?mode=` picks a misbehaviour to proxy."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        mode = parse_qs(urlsplit(self.path).query).get("mode", [""])[0]
        if mode == "early":
            # Refuse a large body without reading it, as a size check would.
            body = b'{"status": 413}'
            self.send_response(413)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        received = b""
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while size := int(self.rfile.readline().strip() or b"0", 16):
                received += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            received = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        info = {
            "method": self.command,
            "path": self.path,
            "length": len(received),
            "first": received[:16].decode("latin-1"),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        body = json.dumps(info).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("WWW-Authenticate", 'Bearer realm="aia"')
        self.send_header("Idempotent-Replayed", "true")
        self.send_header("Location", "http://gw/tasks/1")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), 10):
                    part = body[i : i + 10]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_POST = do_PUT = do_HEAD = do_TRACE = do_QUERY = do_PROPFIND = do_GET  # noqa: N815


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(upstream: str) -> Iterator[GatewayServer]:
    server = GatewayServer("127.0.0.1", 0, dict.fromkeys(FUNCTIONS, upstream))
    server.start()
    yield server
    server.shutdown()
    server.server_close()


def _request(
    gw: GatewayServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_unknown_path_is_problem_json_404(gateway: GatewayServer) -> None:
    resp, data = _request(gateway, "GET", "/nope?x=1")
    problem = problem_body(resp.status, resp.getheader("Content-Type", ""), data, 404)
    assert problem["instance"] == "/nope"
    assert "/nope" in problem["detail"]


def test_forwards_path_query_body_and_headers(gateway: GatewayServer) -> None:
    resp, data = _request(
        gateway,
        "POST",
        "/tasks?a=1&b=two",
        body=b'{"type": "echo"}',
        headers={
            "Authorization": "Bearer k",
            "Idempotency-Key": "abc",
            "Content-Type": "application/json",
            "X-Forwarded-For": "10.0.0.9",
        },
    )
    assert resp.status == 202
    # Answer headers the functions rely on pass through untouched.
    assert resp.getheader("WWW-Authenticate") == 'Bearer realm="aia"'
    assert resp.getheader("Idempotent-Replayed") == "true"
    assert resp.getheader("Location") == "http://gw/tasks/1"
    seen = json.loads(data)
    assert seen["method"] == "POST"
    assert seen["path"] == "/tasks?a=1&b=two"
    assert seen["length"] == len(b'{"type": "echo"}')
    headers = seen["headers"]
    assert headers["authorization"] == "Bearer k"
    assert headers["idempotency-key"] == "abc"
    assert headers["host"] == f"127.0.0.1:{gateway.port}"
    assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gateway.port}"
    assert headers["x-forwarded-proto"] == "http"


def test_streams_a_large_body(gateway: GatewayServer) -> None:
    body = b"x" * (3 * 1024 * 1024)
    resp, data = _request(gateway, "POST", "/tasks/submit", body=body)
    assert resp.status == 202
    assert json.loads(data)["length"] == len(body)


def test_forwards_a_chunked_request_body(gateway: GatewayServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", "/tasks", body=iter([b"hello ", b"world"]), encode_chunked=True)
    resp = conn.getresponse()
    seen = json.loads(resp.read())
    conn.close()
    assert seen["length"] == len(b"hello world")
    assert seen["first"] == "hello world"


def test_rechunks_an_answer_of_unknown_length(gateway: GatewayServer) -> None:
    resp, data = _request(gateway, "GET", "/tasks/42?mode=chunked")
    assert resp.status == 202
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert json.loads(data)["path"] == "/tasks/42?mode=chunked"


def test_relays_an_early_answer_to_an_unread_body(gateway: GatewayServer) -> None:
    resp, data = _request(gateway, "POST", "/tasks?mode=early", body=b"y" * (4 * 1024 * 1024))
    assert resp.status == 413
    assert json.loads(data) == {"status": 413}


def test_keeps_the_client_connection_alive(gateway: GatewayServer) -> None:
    # http.client reconnects silently after a close, so watch the socket itself:
    # every answer must come back on the one connection opened first.
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    paths = ("/health", "/metrics", "/nope", "/tasks/1?mode=chunked", "/health")
    for path in paths:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == (404 if path == "/nope" else 202)
        assert not resp.will_close, f"{path}: the gateway asked to close the connection"
        assert conn.sock is sock, f"{path}: answered on a new connection"
        assert sock.getsockname() == local
    conn.close()


def test_head_has_no_body(gateway: GatewayServer) -> None:
    resp, data = _request(gateway, "HEAD", "/health")
    assert resp.status == 202
    assert data == b""


def test_function_not_running_is_503(upstream: str) -> None:
    server = GatewayServer("127.0.0.1", 0, {"health": upstream})
    server.start()
    try:
        resp, data = _request(server, "GET", "/metrics")
        problem = problem_body(resp.status, resp.getheader("Content-Type", ""), data, 503)
        assert "metrics" in problem["detail"]
    finally:
        server.shutdown()
        server.server_close()


def test_function_refusing_connections_is_502() -> None:
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = dead.getsockname()[1]
        server = GatewayServer("127.0.0.1", 0, {"health": f"127.0.0.1:{port}"})
        server.start()
        try:
            resp, data = _request(server, "GET", "/health")
            problem = problem_body(resp.status, resp.getheader("Content-Type", ""), data, 502)
            assert problem["title"] == "Bad gateway"
        finally:
            server.shutdown()
            server.server_close()


def test_taken_port_fails_to_bind(gateway: GatewayServer) -> None:
    with pytest.raises(OSError, match="in use"):
        GatewayServer("127.0.0.1", gateway.port)


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "PROPFIND"])
def test_any_method_reaches_the_function(gateway: GatewayServer, method: str) -> None:
    """The function decides (405 with Allow); the gateway never answers 501 itself."""
    resp, data = _request(gateway, method, "/tasks/1")
    assert resp.status == 202
    assert json.loads(data)["method"] == method
