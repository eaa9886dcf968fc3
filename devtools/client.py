"""A thin HTTP client for AIA's public contract, for tests and measurements."""

from __future__ import annotations

import time
from typing import Any

import requests

TERMINAL = ("succeeded", "failed", "cancelled")


class AiaClient:
    """Speaks to one base URL with one API key; every call returns the raw response."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        # One session per client keeps connections alive, as a real client would.
        self.session = requests.Session()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        headers.update(extra or {})
        return headers

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        return self.session.request(
            method,
            self.base_url + path,
            headers=self._headers(headers),
            timeout=self.timeout_s,
            **kwargs,
        )

    def submit(
        self,
        body: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        idempotency_key: str | None = None,
        path: str = "/tasks",
    ) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if raw is not None:
            return self.request("POST", path, headers=headers, data=raw)
        return self.request("POST", path, headers=headers, json=body)

    def task(self, task_id: str) -> requests.Response:
        return self.request("GET", f"/tasks/{task_id}")

    def tasks(self, **params: str | int) -> requests.Response:
        return self.request("GET", "/tasks", params=params)

    def wait_for(
        self,
        task_id: str,
        statuses: tuple[str, ...] = TERMINAL,
        *,
        timeout_s: float = 30.0,
        interval_s: float = 0.05,
    ) -> dict[str, Any]:
        """Poll a task until its status is one of `statuses`; its last view otherwise raises."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while True:
            resp = self.task(task_id)
            if resp.status_code == 200:
                last = resp.json()
                if last.get("status") in statuses:
                    return last
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"task {task_id} not in {statuses} after {timeout_s} s: "
                    f"last answer {resp.status_code} {last or resp.text[:300]}"
                )
            time.sleep(interval_s)
