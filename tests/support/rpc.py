"""Stand-ins for a wrapped gRPC method, for tests that compare calls without a server."""

from __future__ import annotations

from typing import Any


class Recorder:
    """Stands in for the RPC: what it was called with, and a fixed answer."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        self.calls.append((request, kwargs))
        return self.answer
