"""The one checker of RFC 7807 answers, for Flask test responses and `requests` responses."""

from __future__ import annotations

import json
from typing import Any

PROBLEM_JSON = "application/problem+json"


def problem_body(
    status_code: int, content_type: str, raw: bytes, status: int, field: str | None = None
) -> dict[str, Any]:
    """Check one answer's parts against the service's problem shape; return the body."""
    text = raw.decode("utf-8", "replace")
    assert status_code == status, f"{status_code} {text[:500]}"
    assert content_type.partition(";")[0].strip() == PROBLEM_JSON, content_type
    body = json.loads(text)
    assert isinstance(body, dict), text[:500]
    assert body["status"] == status, body
    assert str(body["type"]).startswith("https://"), body
    assert isinstance(body["title"], str), body
    assert body["title"], body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    if field is not None:
        assert body.get("field") == field, body
    return body


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """`response` is a Flask test response or a `requests.Response`."""
    get_data = getattr(response, "get_data", None)
    raw: bytes = get_data() if get_data is not None else response.content
    content_type = str(response.headers.get("Content-Type", ""))
    return problem_body(response.status_code, content_type, raw, status, field)
