"""Typed errors, built from the service's RFC 7807 problem+json answers."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from aia_client.models import Task

PROBLEM_TYPE_PREFIX = "https://aia.dev/problems/"


class AIAError(Exception):
    """Base of every error the SDK raises: `.status .code .detail .field .problem`."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}

    @property
    def code(self) -> str | None:
        """The problem type's last segment (`validation`, `not-found`, ...), if it has one."""
        kind = self.problem.get("type")
        if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_PREFIX):
            return kind.removeprefix(PROBLEM_TYPE_PREFIX) or None
        return None

    @property
    def title(self) -> str | None:
        return _str_or_none(self.problem.get("title"))

    @property
    def field(self) -> str | None:
        return _str_or_none(self.problem.get("field"))

    @property
    def instance(self) -> str | None:
        return _str_or_none(self.problem.get("instance"))

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.title) if p)
        return f"{head}: {self.detail}" if head else self.detail


class TransportError(AIAError):
    """The service could not be reached, or the connection broke before an answer."""


class InvalidResponse(AIAError):
    """The service answered something this client cannot read (not the AIA contract)."""


class WaitTimeout(AIAError, TimeoutError):
    """`wait()` gave up before the task reached a terminal status; `.task` is its last view."""

    def __init__(self, detail: str, task: Task) -> None:
        super().__init__(detail)
        self.task = task


class APIError(AIAError):
    """An error answer from the service; also the fallback for statuses without a class."""


class BadRequest(APIError):
    """400: the body is not JSON."""


class Unauthorized(APIError):
    """401: missing, malformed, unknown or revoked API key."""


class BudgetExhausted(APIError):
    """402: the tenant's budget cannot pay for the task; `.balance` and `.price` say why."""

    @property
    def balance(self) -> float | None:
        return _number_or_none(self.problem.get("balance"))

    @property
    def price(self) -> float | None:
        return _number_or_none(self.problem.get("price"))


class NotFound(APIError):
    """404: unknown task (or another tenant's), or unknown route."""


class Conflict(APIError):
    """409: the request contradicts the task's state (e.g. replaying a succeeded task)."""


class PayloadTooLarge(APIError):
    """413: the body is over the service's limit."""


class ValidationError(APIError):
    """422: unknown type, invalid payload or field; `.field` names the first field at fault."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Every field error the service reported (at least the one in `field`/`detail`)."""
        reported = self.problem.get("errors")
        if isinstance(reported, list) and reported:
            return [dict(e) if isinstance(e, Mapping) else {"detail": str(e)} for e in reported]
        return [{"field": self.field, "detail": self.detail}]


class _RetryAfter(APIError):
    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked us to wait (`Retry-After`), if it said."""
        return parse_retry_after(self.headers.get("retry-after"))


class RateLimited(_RetryAfter):
    """429: too many requests; retry after `.retry_after` seconds."""


class ServiceUnavailable(_RetryAfter):
    """503: a dependency of the service is down; retry after `.retry_after` seconds."""


class ServerError(APIError):
    """Any other 5xx: the service (or a gateway before it) failed."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: BudgetExhausted,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error answer, problem+json or not."""
    status = response.status_code
    problem = _problem_body(response)
    detail = _str_or_none(problem.get("detail")) or _str_or_none(problem.get("title"))
    if detail is None:
        detail = response.text.strip()[:500] or response.reason_phrase or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(detail, status=status, problem=problem, headers=response.headers)


def _problem_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return {}  # a proxy's HTML page, say: the status still picks the class
    return dict(body) if isinstance(body, dict) else {}


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
