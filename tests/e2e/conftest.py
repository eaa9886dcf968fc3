"""One local stack per test session, started as processes and torn down by process group."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from devtools.procs import group_alive
from devtools.stack_process import start_stack
from tests.e2e.support import API_KEY_CACHE_S, E2E, Ledger, PubSubRest


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    # A short API-key cache, so the revocation bound can be waited out in a test.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AIA_API_KEY_CACHE_S", str(API_KEY_CACHE_S))
        stack = start_stack(tmp_path_factory.mktemp("stack"))
    port = int(stack.base_url.rsplit(":", 1)[1])
    try:
        yield E2E(
            stack=stack,
            ledger=Ledger(),
            pubsub=PubSubRest(stack.env["PUBSUB_EMULATOR_HOST"], stack.env["GOOGLE_CLOUD_PROJECT"]),
        )
    finally:
        leftovers = stack.stop()
    # Ctrl-C's promise: every child stopped (no Java left behind), the port free again.
    assert stack.proc.returncode == 0, stack.read_output()
    assert not leftovers, f"children left running: {leftovers}"
    assert not any(group_alive(pgid) for pgid in stack.pgids.values())
    with socket.socket() as sock:
        # SO_REUSEADDR as any server sets it: only a live listener makes bind fail,
        # not the TIME_WAIT remnants of the connections the tests made.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
