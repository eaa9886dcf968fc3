"""A webhook receiver on loopback: a threaded HTTP server that records every request.

Each path answers from its own script of statuses (then 200 for ever), so a test
can ask for "500, then 200" or "410" and read back exactly what arrived. The
local stack allows loopback endpoints, so a developer can watch deliveries too:

    python -m devtools.receiver [--port 9000]    # prints each delivery it receives
    curl -X POST $AIA_BASE_URL/webhooks -H "Authorization: Bearer $AIA_API_KEY" \
         -H 'Content-Type: application/json' \
         -d '{"url": "http://127.0.0.1:9000/hook", "events": ["task.succeeded"]}'
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when the body was read


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        received = Received(
            self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
        )
        status, headers = self.server.answer_for(received)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return None


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self._lock = threading.Condition()
        self._scripts: dict[str, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self.received: list[Received] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> None:
        """`path` answers these statuses in order, then 200."""
        with self._lock:
            for answer in answers:
                self._scripts[path].append(answer if isinstance(answer, tuple) else (answer, {}))

    def answer_for(self, received: Received) -> tuple[int, dict[str, str]]:
        with self._lock:
            script = self._scripts[received.path.split("?", 1)[0]]
            answer = script.popleft() if script else (200, {})
            self.received.append(received)
            self._lock.notify_all()
        return answer

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.split("?", 1)[0] == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 60.0) -> list[Received]:
        """The first `count` requests to `path`, waiting for them (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                got = [r for r in self.received if r.path.split("?", 1)[0] == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path} received {len(got)} of {count} requests")
                self._lock.wait(left)

    def wait_for_any(self, seen: int) -> list[Received]:
        """Requests after the first `seen`, waiting until there is one."""
        with self._lock:
            while len(self.received) <= seen:
                self._lock.wait(1.0)
            return self.received[seen:]


@contextlib.contextmanager
def receiver(port: int = 0) -> Iterator[ReceiverServer]:
    server = ReceiverServer(port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.receiver", description=__doc__)
    parser.add_argument("--port", type=int, default=9000)
    port = parser.parse_args().port
    with receiver(port) as server:
        print(f"receiving webhooks on {server.url}/<any path>; Ctrl-C stops", flush=True)
        seen = 0
        try:
            while True:
                got = server.wait_for_any(seen)
                for item in got:
                    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
                    print(
                        f"POST {item.path}",
                        *(f"{n}: {item.headers.get(n)}" for n in names),
                        item.body.decode("utf-8", "replace"),
                        sep="\n  ",
                        flush=True,
                    )
                seen += len(got)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
