"""What the end-to-end tests drive the stack with: HTTP clients, keys, the Pub/Sub emulator."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families

from devtools.client import AiaClient
from devtools.stack_process import RunningStack
from tests.support.pubsub import Received, pull

T = TypeVar("T")
DEADLINE_S = 30.0


def eventually(
    probe: Callable[[], T], ok: Callable[[T], bool], *, timeout_s: float = DEADLINE_S
) -> T:
    """Poll `probe` until `ok` holds on its value; fail with the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last value: {value!r}")
        time.sleep(0.1)


@dataclass
class Ledger:
    """Every task the tests got accepted (not replays), so metrics can be checked exactly."""

    submitted: Counter[str] = field(default_factory=Counter)
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (type, api key)
    revoked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, task_type: str, task_id: str, api_key: str) -> None:
        with self.lock:
            if task_id not in self.tasks:
                self.tasks[task_id] = (task_type, api_key)
                self.submitted[task_type] += 1


class TrackedClient(AiaClient):
    """An `AiaClient` that writes every newly accepted task into the ledger."""

    def __init__(self, base_url: str, api_key: str | None, ledger: Ledger) -> None:
        super().__init__(base_url, api_key)
        self.ledger = ledger

    def submit(
        self,
        body: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        idempotency_key: str | None = None,
        path: str = "/tasks",
    ) -> requests.Response:
        resp = super().submit(body, raw=raw, idempotency_key=idempotency_key, path=path)
        if resp.status_code == 202 and resp.headers.get("Idempotent-Replayed") != "true":
            sent = body if body is not None else json.loads(raw or b"{}")
            self.ledger.record(str(sent["type"]), str(resp.json()["task_id"]), self.api_key or "")
        return resp


class PubSubRest:
    """The Pub/Sub emulator's REST surface: the tests stay plain HTTP clients."""

    def __init__(self, host: str, project: str) -> None:
        self.base = f"http://{host}/v1/projects/{project}"
        self.host = host
        self.project = project

    def create_subscription(self, name: str, topic: str) -> None:
        resp = requests.put(
            f"{self.base}/subscriptions/{name}",
            json={"topic": f"projects/{self.project}/topics/{topic}", "ackDeadlineSeconds": 60},
            timeout=10,
        )
        assert resp.status_code in (200, 409), resp.text

    def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        message: dict[str, Any] = {"data": base64.b64encode(data).decode()}
        if attributes:
            message["attributes"] = attributes
        resp = requests.post(
            f"{self.base}/topics/{topic}:publish", json={"messages": [message]}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["messageIds"][0])

    def pull(self, subscription: str) -> list[Received]:
        """Messages waiting now on `subscription` (a short name), acknowledged."""
        return pull(f"projects/{self.project}/subscriptions/{subscription}", host=self.host)


def mentions(message: Received, task_id: str) -> bool:
    """Whether a message is about `task_id`, in its data or its attributes."""
    return task_id in message.data.decode("utf-8", "replace") or task_id in (
        message.attributes.values()
    )


MetricKey = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Prometheus text → {(sample name, labels): value}."""
    samples: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class E2E:
    """One running stack plus everything the tests need to talk to it."""

    stack: RunningStack
    ledger: Ledger
    pubsub: PubSubRest

    def client(self, api_key: str | None) -> TrackedClient:
        return TrackedClient(self.stack.base_url, api_key, self.ledger)

    def dev(self) -> TrackedClient:
        return self.client(self.stack.api_key)

    def create_key(self, tenant: str) -> str:
        key = self.stack.cli("keys", "create", "--tenant", tenant).stdout.strip()
        assert key, "keys create printed nothing"
        assert "\n" not in key, key
        return key

    def revoke_key(self, key: str) -> None:
        # Keys are `aia_<key id>_<secret>`; revoke takes the id (or the whole key).
        self.stack.cli("keys", "revoke", key.split("_")[1])
        self.ledger.revoked.add(key)

    def metrics(self) -> dict[MetricKey, float]:
        token = self.stack.env["AIA_METRICS_TOKEN"]
        resp = requests.get(
            f"{self.stack.base_url}/metrics",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return parse_metrics(resp.text)

    def worker_log(self) -> str:
        path = self.stack.state_dir / "logs" / "process_task.log"
        return path.read_text(encoding="utf-8", errors="replace")
