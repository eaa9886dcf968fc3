"""`python -m bench.floor.gateway NAME=HOST:PORT ...`: a `devtools.gateway` for the floor.

Its own process, as the stack's gateway runs in the stack's process: inside the
benchmark it would share the GIL with the client threads it is measured by.
Prints `READY <port>` once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from devtools.gateway import GatewayServer


def main(argv: list[str]) -> int:
    upstreams = dict(arg.split("=", 1) for arg in argv)
    server = GatewayServer("127.0.0.1", 0, upstreams)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"READY {server.port}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
