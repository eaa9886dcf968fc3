"""A scripted AIA service for `httpx.MockTransport`, and a clock that moves only when slept."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE_URL = "http://aia.test"
KEY = "aia_k1_secret"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def view(task_id: str = "t" * 32, status: str = "queued", **fields: Any) -> dict[str, Any]:
    """A task view as the service sends it."""
    body: dict[str, Any] = {
        "task_id": task_id,
        "type": "echo",
        "status": status,
        "attempts": 1 if status != "queued" else 0,
        "max_attempts": 3,
        "created_at": "2025-01-02T03:04:05.123456Z",
        "started_at": None,
        "finished_at": None,
    }
    body.update(fields)
    return body


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def problem(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {
        "type": f"https://aia.dev/problems/{code}",
        "title": code.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        **extra,
    }
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/problem+json", **(headers or {})},
    )


class Script:
    """Answers requests in order; records every request it saw."""

    def __init__(self, answers: Iterable[Answer]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


@dataclass
class FakeClock:
    """`time.monotonic` and `time.sleep` in one: time passes only by sleeping."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
