"""What every HTTP function answers outside its routes: a 404 problem, or a 405 with Allow."""

from __future__ import annotations

from typing import Any

from tests.support.problems import assert_problem

OTHER_METHODS = ("POST", "PUT", "DELETE", "PATCH")


def assert_serves_only(
    client: Any,
    *,
    path: str,
    unknown: str,
    allow: str = "GET, HEAD",
    refused: tuple[str, ...] = OTHER_METHODS,
) -> None:
    """`unknown` is a 404 problem naming it; each of `refused` on `path` is a 405 naming `allow`."""
    missing = assert_problem(client.get(unknown), 404)
    assert unknown in missing["detail"], missing
    for method in refused:
        response = client.open(path, method=method)
        assert_problem(response, 405)
        assert response.headers["Allow"] == allow, method
