"""Which route of the table a request to a function is: one rule for 404 and 405 everywhere."""

from __future__ import annotations

from typing import Protocol

from shared.api import routes
from shared.errors import MethodNotAllowed, NotFound


class _Request(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...


def route_of(request: _Request, function: str, *, root: str | None = None) -> routes.Route:
    """The route of `request` among those `function` serves, or the 404 or 405 to answer.

    `root` is the path a request to the function's own URL ("/") stands for. A
    method the table serves nowhere at the path is a 405 whose Allow lists every
    method the table serves there, whichever function serves them.
    """
    path = routes.normalize(request.path)
    if path == "/" and root is not None:
        path = root
    # HEAD is GET without the body (Flask drops it).
    method = "GET" if request.method == "HEAD" else request.method
    route = routes.find(method, path)
    if route is not None and route.function == function:
        return route
    allowed = routes.allowed_methods(path)
    if route is not None:
        # Served, but by another function: this function's own URL was called.
        allowed = tuple(m for m in allowed if _function_of(m, path) == function)
    if not allowed:
        raise NotFound(f"no route for {request.path}")
    raise MethodNotAllowed(f"{request.method} is not allowed here", allowed=_with_head(allowed))


def _function_of(method: str, path: str) -> str | None:
    route = routes.find(method, path)
    return route.function if route is not None else None


def _with_head(methods: tuple[str, ...]) -> tuple[str, ...]:
    return (*methods, "HEAD") if "GET" in methods else methods
