"""What the sync and async clients share, free of I/O: settings, retry and polling decisions,
request shapes and response reading."""

from __future__ import annotations

import dataclasses
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote

import httpx

from aia_client._version import __version__
from aia_client.errors import InvalidResponse, error_from_response, parse_retry_after
from aia_client.models import SubmittedTask, Task, Usage

BASE_URL_ENV = "AIA_BASE_URL"
API_KEY_ENV = "AIA_API_KEY"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_PAGE_SIZE = 100  # the service's largest page


class ConfigurationError(ValueError):
    """The client was not told where the service is."""


def resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(BASE_URL_ENV)
    if not url:
        raise ConfigurationError(f"no base URL: pass base_url= or set {BASE_URL_ENV}")
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get(API_KEY_ENV) or None


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": f"aia-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Safety(Enum):
    """How freely a request may be sent again."""

    # Reads, submits carrying an Idempotency-Key: a repeat changes nothing.
    IDEMPOTENT = "idempotent"
    # Anything else: only resent when the service certainly did not act on it.
    UNSAFE = "unsafe"


# Failures after which the request certainly never reached the service.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures worth another try for a request that may be repeated.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# 429 refuses before acting; 502/503/504 may come after the service acted.
_RETRY_ALWAYS = frozenset({429})
_RETRY_IF_IDEMPOTENT = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a `Retry-After` from the service wins."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    # A longer Retry-After is surfaced to the caller (`.retry_after`) instead of slept.
    max_retry_after_s: float = 60.0

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Delay before retry number `retry` (0-based): half to all of base * 2^retry."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return ceiling * (0.5 + rand() / 2)

    def delay_after_response(
        self, retry: int, response: httpx.Response, safety: Safety
    ) -> float | None:
        """Seconds to wait before resending after `response`, or None to give up."""
        status = response.status_code
        if retry >= self.max_retries:
            return None
        if status not in _RETRY_ALWAYS and not (
            safety is Safety.IDEMPOTENT and status in _RETRY_IF_IDEMPOTENT
        ):
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            return self.backoff(retry)
        return retry_after if retry_after <= self.max_retry_after_s else None

    def delay_after_error(
        self, retry: int, exc: httpx.TransportError, safety: Safety
    ) -> float | None:
        """Seconds to wait before resending after a transport failure, or None to give up."""
        if retry >= self.max_retries:
            return None
        transient = _TRANSIENT if safety is Safety.IDEMPOTENT else _NOT_SENT
        return self.backoff(retry) if isinstance(exc, transient) else None


@dataclass(frozen=True)
class PollSchedule:
    """`wait()`'s polling: start at `poll_s`, grow while nothing changes, reset on change."""

    poll_s: float = 0.25
    max_poll_s: float = 2.0
    factor: float = 1.5

    def next(self, current: float, changed: bool) -> float:
        return self.poll_s if changed else min(self.max_poll_s, current * self.factor)


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def submit_body(
    task_type: str,
    payload: Mapping[str, Any],
    max_attempts: int | None,
    timeout_s: int | None,
    *,
    concurrency_key: str | None = None,
    max_running: int | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": task_type, "payload": dict(payload)}
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    if concurrency_key is not None:
        body["concurrency_key"] = concurrency_key
    if max_running is not None:
        body["max_running"] = max_running
    if priority is not None:
        body["priority"] = priority
    return body


def task_path(task_id: str, action: str = "") -> str:
    # Quoted so an id can never reach another route ("../", "?", "#").
    return f"/tasks/{quote(task_id, safe='')}{action}"


def list_params(
    status: str | None, task_type: str | None, page_size: int, page_token: str | None
) -> dict[str, str]:
    params = {"limit": str(page_size)}
    if status:
        params["status"] = str(status)
    if task_type:
        params["type"] = task_type
    if page_token:
        params["page_token"] = page_token
    return params


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise InvalidResponse(
            f"expected JSON from {response.request.method} {response.request.url.path}, got "
            f"{response.headers.get('Content-Type', 'no content type')}: {response.text[:200]!r}",
            status=response.status_code,
        ) from exc


def read_task(response: httpx.Response) -> Task:
    return Task.from_json(json_body(response))


def read_usage(response: httpx.Response) -> Usage:
    return Usage.from_json(json_body(response))


def read_submitted(
    response: httpx.Response, body: Mapping[str, Any], idempotency_key: str
) -> SubmittedTask:
    """The submit answer (`task_id`, `status`, `status_url`, maybe `dispatch`) as a task,
    filled in with what was submitted."""
    answer = json_body(response)
    if not isinstance(answer, Mapping):
        raise InvalidResponse(f"expected a submit answer object, got {answer!r:.200}")
    submitted = {"type": body["type"], "max_attempts": body.get("max_attempts")}
    task = Task.from_json(submitted | dict(answer))
    known = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    return SubmittedTask(
        **(known | {"raw": dict(answer)}),
        idempotency_key=idempotency_key,
        replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
    )


def read_page(response: httpx.Response) -> tuple[list[Task], str | None]:
    page = json_body(response)
    if not isinstance(page, Mapping) or not isinstance(page.get("tasks"), list):
        raise InvalidResponse(f"expected {{'tasks': [...]}}, got {page!r:.200}")
    token = page.get("next_page_token")
    return [Task.from_json(t) for t in page["tasks"]], token if isinstance(token, str) else None


def check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    raise error_from_response(response)
