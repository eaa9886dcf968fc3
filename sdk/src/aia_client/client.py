"""`Client` and `AsyncClient`: the same methods, blocking or awaitable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from aia_client import _core
from aia_client._core import PollSchedule, RetryPolicy, Safety
from aia_client.errors import TransportError, WaitTimeout, error_from_response
from aia_client.models import SubmittedTask, Task, Usage

ProgressCallback = Callable[[Task], None]


class _Base:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        max_retries: int,
        retry_policy: RetryPolicy | None,
    ) -> None:
        self.base_url = _core.resolve_base_url(base_url)
        self._api_key = _core.resolve_api_key(api_key)
        self._retry = retry_policy or RetryPolicy(max_retries=max_retries)

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return _core.default_headers(self._api_key) | dict(extra or {})

    def _delay(
        self, retry: int, outcome: httpx.Response | httpx.RequestError, safety: Safety
    ) -> float | None:
        if isinstance(outcome, httpx.Response):
            return self._retry.delay_after_response(retry, outcome, safety)
        if isinstance(outcome, httpx.TransportError):
            return self._retry.delay_after_error(retry, outcome, safety)
        return None

    @staticmethod
    def _fail(method: str, path: str, outcome: httpx.Response | httpx.RequestError) -> Exception:
        if isinstance(outcome, httpx.Response):
            return error_from_response(outcome)
        return TransportError(f"{method} {path}: {type(outcome).__name__}: {outcome}")


class Client(_Base):
    """A blocking client for one AIA service; reuses its connections until `close()`.

    `base_url` and `api_key` default to `AIA_BASE_URL` and `AIA_API_KEY`. Answers 429,
    502, 503, 504 and connection failures are retried up to `max_retries` times with
    backoff, honouring `Retry-After`. `transport`, `sleep` and `clock` exist for tests
    and custom networking.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT_S,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, max_retries=max_retries, retry_policy=retry_policy)
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers(headers),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout_s: int | None = None,
        concurrency_key: str | None = None,
        max_running: int | None = None,
        priority: int | None = None,
    ) -> SubmittedTask:
        """Submit a task. Every retry carries the same `Idempotency-Key` (one is made if
        none is given), so a retried submit never creates a second task. With a
        `concurrency_key`, at most `max_running` (default 1) of your tasks sharing it
        run at once; the others wait `queued`, first in line by `priority` (0-9,
        default 5, higher first)."""
        key = idempotency_key or _core.new_idempotency_key()
        body = _core.submit_body(
            type,
            payload,
            max_attempts,
            timeout_s,
            concurrency_key=concurrency_key,
            max_running=max_running,
            priority=priority,
        )
        response = self._send("POST", "/tasks", json=body, headers={"Idempotency-Key": key})
        return _core.read_submitted(response, body, key)

    def get(self, task_id: str) -> Task:
        return _core.read_task(self._send("GET", _core.task_path(task_id)))

    def usage(self) -> Usage:
        """Your token balance, what running tasks hold, this month's spending, your limits."""
        return _core.read_usage(self._send("GET", "/usage"))

    def list(
        self,
        status: str | None = None,
        type: str | None = None,
        *,
        page_size: int = _core.DEFAULT_PAGE_SIZE,
    ) -> Iterator[Task]:
        """Every matching task, newest first, fetching pages as the iteration needs them."""
        token: str | None = None
        while True:
            params = _core.list_params(status, type, page_size, token)
            tasks, token = _core.read_page(self._send("GET", "/tasks", params=params))
            yield from tasks
            if not token:
                return

    def dead_letters(
        self, type: str | None = None, *, page_size: int = _core.DEFAULT_PAGE_SIZE
    ) -> Iterator[Task]:
        """Tasks that failed for good (what `replay()` takes)."""
        return self.list("failed", type, page_size=page_size)

    def replay(self, task_id: str) -> Task:
        """Queue a task that failed for good again; 409 `Conflict` if it succeeded or was
        cancelled. Resent only when the service certainly did not act on it."""
        path = _core.task_path(task_id, ":replay")
        return _core.read_task(self._send("POST", path, safety=Safety.UNSAFE))

    def wait(
        self,
        task_id: str,
        timeout: float | None = None,
        poll: float = 0.25,
        *,
        max_poll: float = 2.0,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """Poll until the task is succeeded, failed or cancelled, and return it.

        Polling starts every `poll` s, slows to `max_poll` while nothing changes and
        speeds up again on change. `on_progress` gets each view that differs from the
        last. Raises `WaitTimeout` after `timeout` s (None: no limit).
        """
        schedule = PollSchedule(poll, max_poll)
        deadline = None if timeout is None else self._clock() + timeout
        interval, last = poll, None
        while True:
            task = self.get(task_id)
            changed = last is None or task.raw != last.raw
            if changed and on_progress is not None:
                on_progress(task)
            if task.terminal:
                return task
            interval, last = schedule.next(interval, changed), task
            self._sleep(_pause(interval, deadline, self._clock(), task))

    def _send(
        self,
        method: str,
        path: str,
        *,
        safety: Safety = Safety.IDEMPOTENT,
        **kwargs: Any,
    ) -> httpx.Response:
        retry = 0
        while True:
            outcome: httpx.Response | httpx.RequestError
            try:
                outcome = self._http.request(method, path, **kwargs)
            except httpx.RequestError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return outcome
            delay = self._delay(retry, outcome, safety)
            if delay is None:
                error = self._fail(method, path, outcome)
                raise error from (outcome if isinstance(outcome, Exception) else None)
            self._sleep(delay)
            retry += 1


class AsyncClient(_Base):
    """The awaitable twin of `Client`: the same arguments and methods."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = _core.DEFAULT_TIMEOUT_S,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(base_url, api_key, max_retries=max_retries, retry_policy=retry_policy)
        self._sleep = sleep
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers(headers),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout_s: int | None = None,
        concurrency_key: str | None = None,
        max_running: int | None = None,
        priority: int | None = None,
    ) -> SubmittedTask:
        """See `Client.submit`."""
        key = idempotency_key or _core.new_idempotency_key()
        body = _core.submit_body(
            type,
            payload,
            max_attempts,
            timeout_s,
            concurrency_key=concurrency_key,
            max_running=max_running,
            priority=priority,
        )
        response = await self._send("POST", "/tasks", json=body, headers={"Idempotency-Key": key})
        return _core.read_submitted(response, body, key)

    async def get(self, task_id: str) -> Task:
        return _core.read_task(await self._send("GET", _core.task_path(task_id)))

    async def usage(self) -> Usage:
        """See `Client.usage`."""
        return _core.read_usage(await self._send("GET", "/usage"))

    async def list(
        self,
        status: str | None = None,
        type: str | None = None,
        *,
        page_size: int = _core.DEFAULT_PAGE_SIZE,
    ) -> AsyncIterator[Task]:
        """See `Client.list`."""
        token: str | None = None
        while True:
            params = _core.list_params(status, type, page_size, token)
            tasks, token = _core.read_page(await self._send("GET", "/tasks", params=params))
            for task in tasks:
                yield task
            if not token:
                return

    def dead_letters(
        self, type: str | None = None, *, page_size: int = _core.DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[Task]:
        """See `Client.dead_letters`."""
        return self.list("failed", type, page_size=page_size)

    async def replay(self, task_id: str) -> Task:
        """See `Client.replay`."""
        path = _core.task_path(task_id, ":replay")
        return _core.read_task(await self._send("POST", path, safety=Safety.UNSAFE))

    async def wait(
        self,
        task_id: str,
        timeout: float | None = None,
        poll: float = 0.25,
        *,
        max_poll: float = 2.0,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """See `Client.wait`."""
        schedule = PollSchedule(poll, max_poll)
        deadline = None if timeout is None else self._clock() + timeout
        interval, last = poll, None
        while True:
            task = await self.get(task_id)
            changed = last is None or task.raw != last.raw
            if changed and on_progress is not None:
                on_progress(task)
            if task.terminal:
                return task
            interval, last = schedule.next(interval, changed), task
            await self._sleep(_pause(interval, deadline, self._clock(), task))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        safety: Safety = Safety.IDEMPOTENT,
        **kwargs: Any,
    ) -> httpx.Response:
        retry = 0
        while True:
            outcome: httpx.Response | httpx.RequestError
            try:
                outcome = await self._http.request(method, path, **kwargs)
            except httpx.RequestError as exc:
                outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return outcome
            delay = self._delay(retry, outcome, safety)
            if delay is None:
                error = self._fail(method, path, outcome)
                raise error from (outcome if isinstance(outcome, Exception) else None)
            await self._sleep(delay)
            retry += 1


def _pause(interval: float, deadline: float | None, now: float, task: Task) -> float:
    """How long to sleep before the next poll; raises once the deadline has passed."""
    if deadline is None:
        return interval
    remaining = deadline - now
    if remaining <= 0:
        raise WaitTimeout(
            f"task {task.task_id} still {task.status} when the wait timed out", task=task
        )
    return min(interval, remaining)
