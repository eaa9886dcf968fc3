"""Webhooks on the emulators: outbox, fan-out, retries on an injected clock, rotation, replay."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from devtools.receiver import ReceiverServer, receiver
from shared.errors import Conflict, DeliveryNotReplayable, NotFound, ValidationFailed
from shared.pubsub_fast import FastPublisher
from shared.security.crypto import TaskOpener, TaskSealer, key_id_of
from shared.security.keyring import KeyRing, rotate_keyring
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TaskMessage
from shared.tasks.repository import FirestoreTaskRepository
from shared.tasks.status import StatusService
from shared.tasks.submission import SubmitService
from shared.tasks.worker import Worker
from shared.webhooks.delivery import Deliverer, Handled, StatusBodies, Sweeper
from shared.webhooks.egress import Egress
from shared.webhooks.endpoints import EndpointService, TaskWebhookCheck, signer_id
from shared.webhooks.keys import open_key, rewrap_endpoint_keys
from shared.webhooks.models import Endpoint, WebhookMessage
from shared.webhooks.outbox import (
    CATCHUP_WINDOW,
    EVENT_GRACE,
    EndpointDirectory,
    Notifier,
    WebhookEvents,
)
from shared.webhooks.schedule import RetryPolicy
from shared.webhooks.signing import verify_v1a
from shared.webhooks.store import FirestoreWebhookStore
from tests.conftest import observed_topics
from tests.support.pubsub import pull

from .conftest import PROJECT, Pipeline

pytestmark = pytest.mark.integration

WEBHOOK_TOPIC = "aia-webhook-events"
RETENTION = timedelta(days=30)


class Midpoint:
    """A random source whose jitter factor is exactly 1."""

    def random(self) -> float:
        return 0.5


@dataclass
class Clock:
    """Wall time for the deliverer and the sweep: real at first, moved on by the test."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


@dataclass
class Monotonic:
    at: float = 1000.0

    def __call__(self) -> float:
        return self.at


@dataclass
class Hooks:
    p: Pipeline
    server: ReceiverServer
    store: FirestoreWebhookStore
    service: EndpointService
    submit: SubmitService
    worker: Worker
    status: StatusService
    deliverer: Deliverer
    sweeper: Sweeper
    clock: Clock
    cache_clock: Monotonic
    lookups: list[str]
    webhook_sub: str

    def register(
        self,
        tenant: str = "acme",
        path: str = "/hook",
        events: list[str] | None = None,
        **more: Any,
    ) -> dict[str, Any]:
        body = {"url": self.server.url + path, "events": events or ["task.succeeded"], **more}
        return self.service.register(tenant, body)

    def run(self, body: dict[str, Any], tenant: str = "acme") -> str:
        task_id = self.submit.submit(tenant, body).task_id
        self.worker.process(self.published(task_id))
        return task_id

    def published(self, task_id: str) -> TaskMessage:
        """The message submit published, as the push delivers it: a fresh task's first
        delivery opens the document the message carries, without a read."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for message in self.p.pull(self.p.tasks_sub):
                if message["data"]["task_id"] == task_id:
                    return TaskMessage.model_validate(message["data"])
            time.sleep(0.05)
        raise AssertionError(f"submit published no message for {task_id}")

    def messages(self) -> list[WebhookMessage]:
        return [WebhookMessage.model_validate(m.json()) for m in pull(self.webhook_sub)]

    def deliver(self) -> list[Handled]:
        """Handle every message waiting on the webhook topic, as the push would."""
        return [self.deliverer.handle(m) for m in self.messages()]

    def delivery(self, endpoint_id: str, tenant: str = "acme") -> dict[str, Any]:
        (only,) = self.service.deliveries(tenant, endpoint_id, {})["deliveries"]
        return dict(only)

    def view_bytes(self, task_id: str, tenant: str = "acme") -> bytes:
        return json.dumps(
            self.status.get(tenant, task_id).to_json(), separators=(",", ":")
        ).encode()


@pytest.fixture
def h(pipeline: Pipeline) -> Iterator[Hooks]:
    ((topic, sub),) = observed_topics(PROJECT, (WEBHOOK_TOPIC,)).values()
    client = FastPublisher()
    notifier = Notifier(lambda: client, topic, wait_s=5)
    store = FirestoreWebhookStore(pipeline.db)
    cache_clock = Monotonic()
    lookups: list[str] = []

    def load(tenant_id: str) -> list[Endpoint]:
        lookups.append(tenant_id)
        return store.tenant_endpoints(tenant_id)

    events = WebhookEvents(
        EndpointDirectory(load, ttl_s=30, clock=cache_clock), store, notifier, retention=RETENTION
    )
    ring = pipeline.ring
    documents = TaskDocuments(TaskSealer(ring), TaskOpener(ring), retention=RETENTION)
    repository = FirestoreTaskRepository(pipeline.db, documents, metric_shards=4, events=events)
    status = StatusService(repository)
    loopback = Egress(allow_loopback=True)
    public = TaskSealer(ring.public_only())
    clock = Clock()
    opener = TaskOpener(ring)
    with receiver() as server:
        yield Hooks(
            p=pipeline,
            server=server,
            store=store,
            service=EndpointService(store, public, loopback.check, notifier),
            submit=SubmitService(
                repository,
                pipeline.publisher,
                pipeline.registry,
                public,
                pipeline.submit._settings,
                webhook_check=TaskWebhookCheck(store, public, loopback.check, cache_s=30),
            ),
            worker=pipeline.worker_with(repository),
            status=status,
            deliverer=Deliverer(
                store,
                StatusBodies(status, pipeline.db, documents),
                opener,
                loopback,
                signer_id=lambda tenant: signer_id(opener, tenant),
                retention=RETENTION,
                policy=RetryPolicy(rng=Midpoint()),  # type: ignore[arg-type]
                clock=clock,
                sleep=clock.sleep,
            ),
            sweeper=Sweeper(store, notifier, retention=RETENTION, clock=clock),
            clock=clock,
            cache_clock=cache_clock,
            lookups=lookups,
            webhook_sub=sub,
        )


def webhook_events(h: Hooks) -> list[dict[str, Any]]:
    return [s.to_dict() for s in h.p.db.collection("webhook_events").stream()]


# The happy path, and what it costs


def test_a_finished_task_is_delivered_once_signed_with_the_task_view_as_body(h: Hooks) -> None:
    endpoint = h.register(events=["task.succeeded", "task.failed"])
    assert endpoint["secret"].startswith("whsec_")
    task_id = h.run({"type": "echo", "payload": {"hello": "webhooks"}})
    (message,) = h.messages()
    assert message.tenant_id == "acme"
    assert h.deliverer.handle(message).outcome == "fanned-out"
    (got,) = h.server.on("/hook")
    assert got.body == h.view_bytes(task_id)
    assert json.loads(got.body)["result"] == {"hello": "webhooks"}
    # The official library, with the secret as it was shown.
    assert Webhook(endpoint["secret"]).verify(got.body, got.headers)["task_id"] == task_id
    assert got.headers["webhook-id"] == message.event_id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["aia-event-type"] == "task.succeeded"
    delivery = h.delivery(endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert delivery["webhook_id"] == message.event_id
    assert delivery["task_id"] == task_id
    (attempt,) = delivery["attempts"]
    assert attempt["response_code"] == 200
    assert attempt["outcome"] == "succeeded"
    assert attempt["latency_ms"] >= 0
    # A second push of the same event (Pub/Sub is at least once) sends nothing more.
    assert h.deliverer.handle(message).detail == "fanned out already"
    assert len(h.server.on("/hook")) == 1


def test_a_tenant_without_endpoints_pays_one_cached_lookup_and_no_write(h: Hooks) -> None:
    for _ in range(3):
        h.run({"type": "echo", "payload": {}}, tenant="quiet")
    assert h.lookups == ["quiet"]
    assert webhook_events(h) == []
    assert h.messages() == []


def test_only_subscribed_event_types_are_staged(h: Hooks) -> None:
    h.register(events=["task.failed"])
    h.run({"type": "echo", "payload": {}})
    assert webhook_events(h) == []
    h.run({"type": "fail", "payload": {"times": 5, "retryable": False}})
    (event,) = webhook_events(h)
    assert event["type"] == "task.failed"
    h.deliver()
    (got,) = h.server.on("/hook")
    assert json.loads(got.body)["status"] == "failed"


# Retries on an injected clock


def test_500_then_200_is_retried_five_seconds_later_with_the_same_webhook_id(h: Hooks) -> None:
    endpoint = h.register()
    h.server.script("/hook", 500)
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    first, second = h.server.on("/hook")
    assert h.clock.slept == [5]
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 5
    delivery = h.delivery(endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert [a["response_code"] for a in delivery["attempts"]] == [500, 200]
    assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "succeeded"]


def test_the_whole_schedule_then_it_gives_up(h: Hooks) -> None:
    endpoint = h.register()
    h.server.script("/hook", *([503] * 8))
    h.run({"type": "echo", "payload": {}})
    h.deliver()  # attempts 1 and 2 (5 s apart, in the same call)
    while True:
        delivery = h.delivery(endpoint["id"])
        due = delivery.get("next_attempt_at")
        if due is None:
            break
        due_at = datetime.fromisoformat(due)
        # Not due yet: the sweep sends nothing.
        h.clock.now = due_at - timedelta(seconds=30)
        assert h.sweeper.sweep().deliveries == 0
        h.clock.now = due_at
        assert h.sweeper.sweep().deliveries == 1
        assert [r.outcome for r in h.deliver()] in (["pending"], ["failed"])
    times = [datetime.fromisoformat(a["at"]) for a in delivery["attempts"]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert delivery["status"] == "failed"
    assert delivery["reason"] == "retries-exhausted"
    assert len(h.server.on("/hook")) == 8


def test_retry_after_is_honoured(h: Hooks) -> None:
    endpoint = h.register()
    h.server.script("/hook", (503, {"Retry-After": "120"}))
    h.run({"type": "echo", "payload": {}})
    started = h.clock.now
    h.deliver()
    delivery = h.delivery(endpoint["id"])
    assert delivery["status"] == "pending"
    assert datetime.fromisoformat(delivery["next_attempt_at"]) == started + timedelta(seconds=120)
    assert h.clock.slept == []  # longer than an inline wait: the sweep sends it


def test_a_410_disables_the_endpoint_and_later_events_are_not_sent(h: Hooks) -> None:
    endpoint = h.register()
    h.server.script("/hook", 410)
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    assert h.service.get("acme", endpoint["id"])["status"] == "disabled"
    assert h.service.get("acme", endpoint["id"])["disabled_reason"] == "gone"
    delivery = h.delivery(endpoint["id"])
    assert (delivery["status"], delivery["reason"]) == ("failed", "gone")
    with pytest.raises(DeliveryNotReplayable, match="disabled"):
        h.service.replay("acme", delivery["id"])
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    assert len(h.server.on("/hook")) == 1


def test_a_refused_answer_is_not_retried_and_a_replay_resends_it(h: Hooks) -> None:
    endpoint = h.register()
    h.server.script("/hook", 400)
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    delivery = h.delivery(endpoint["id"])
    assert (delivery["status"], delivery["reason"]) == ("failed", "http-400")
    view, dispatched = h.service.replay("acme", delivery["id"])
    assert dispatched
    assert view["status"] == "pending"
    # Idempotent while pending.
    assert h.service.replay("acme", delivery["id"])[0]["replays"] == 1
    assert [r.outcome for r in h.deliver()] == ["succeeded"]
    first, again = h.server.on("/hook")
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert first.body == again.body
    replayed = h.delivery(endpoint["id"])
    assert replayed["status"] == "succeeded"
    assert replayed["replays"] == 1
    assert [a["response_code"] for a in replayed["attempts"]] == [400, 200]
    with pytest.raises(NotFound):
        h.service.replay("globex", delivery["id"])


# Keys


def test_during_a_rotation_both_secrets_verify_with_the_official_library(h: Hooks) -> None:
    endpoint = h.register()
    rotated = h.service.rotate("acme", endpoint["id"])
    assert rotated["secret"] != endpoint["secret"]
    assert len(rotated["signing_keys"]) == 2
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    (got,) = h.server.on("/hook")
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (endpoint["secret"], rotated["secret"]):
        Webhook(secret).verify(got.body, got.headers)
    # Past the overlap only the new key signs.
    h.clock.now += timedelta(hours=24, seconds=1)
    h.run({"type": "echo", "payload": {}})
    h.deliver()
    _, later = h.server.on("/hook")
    assert len(later.headers["webhook-signature"].split(" ")) == 1


def test_v1a_deliveries_verify_with_the_public_key_alone(h: Hooks) -> None:
    endpoint = h.register(signature="v1a")
    assert "secret" not in endpoint
    public = endpoint["public_key"]
    assert public.startswith("whpk_")
    task_id = h.run({"type": "echo", "payload": {"v": "1a"}})
    h.deliver()
    (got,) = h.server.on("/hook")
    stamp = int(got.headers["webhook-timestamp"])
    assert verify_v1a(
        public, got.headers["webhook-id"], stamp, got.body, got.headers["webhook-signature"]
    )
    assert got.body == h.view_bytes(task_id)


def test_signing_keys_are_stored_sealed(h: Hooks) -> None:
    endpoint = h.register()
    raw = h.p.db.collection("webhook_endpoints").document(endpoint["id"]).get().to_dict()
    secret = base64.b64decode(endpoint["secret"].removeprefix("whsec_"))
    stored = json.dumps(
        raw, default=lambda v: base64.b64encode(v).decode() if isinstance(v, bytes) else str(v)
    )
    assert endpoint["secret"] not in stored
    assert base64.b64encode(secret).decode() not in stored
    assert secret not in b"".join(s["sealed"] for s in raw["secrets"])
    # The listing never shows it again.
    listed = h.service.list("acme", {})["webhooks"]
    assert "secret" not in json.dumps(listed)


# Per-task webhook_url


def test_a_webhook_url_on_one_task_is_delivered_for_that_task_only(h: Hooks) -> None:
    key = h.service.create_signing_key("acme", {})
    assert key["kind"] == "task"
    url = h.server.url + "/mine"
    task_id = h.run({"type": "echo", "payload": {"x": 1}, "webhook_url": url})
    h.run({"type": "echo", "payload": {"x": 2}})
    h.deliver()
    (got,) = h.server.on("/mine")
    assert got.body == h.view_bytes(task_id)
    Webhook(key["secret"]).verify(got.body, got.headers)
    raw = h.p.db.collection("tasks").document(task_id).get().to_dict()
    assert raw["notify"] is True
    assert isinstance(raw["webhook_url"], bytes)
    assert url.encode() not in raw["webhook_url"]
    assert h.delivery(key["id"])["task_id"] == task_id


def test_a_webhook_url_needs_a_signing_key_and_passes_the_egress_rules(h: Hooks) -> None:
    with pytest.raises(ValidationFailed) as missing:
        h.submit.submit("acme", {"type": "echo", "payload": {}, "webhook_url": h.server.url})
    assert (missing.value.field, missing.value.extra["rule"]) == ("webhook_url", "no-signing-key")
    h.service.create_signing_key("acme", {"signature": "v1"})
    strict = TaskWebhookCheck(
        h.store, TaskSealer(h.p.ring), Egress(allow_loopback=False).check, cache_s=30
    )
    for url, rule in (
        (h.server.url, "https-required"),
        ("https://127.0.0.1/x", "loopback-address"),
    ):
        with pytest.raises(ValidationFailed) as refused:
            strict("acme", url)
        assert (refused.value.field, refused.value.extra["rule"]) == ("webhook_url", rule)
        assert rule in refused.value.detail


# Nothing lost


def test_a_stale_cache_loses_no_event_the_catch_up_creates_it(h: Hooks) -> None:
    h.run({"type": "echo", "payload": {}})  # caches "no endpoint" for acme
    endpoint = h.register()
    h.cache_clock.at += 29  # still within the cache's 30 s
    task_id = h.run({"type": "echo", "payload": {"late": True}})
    assert webhook_events(h) == []  # the stale cache said nobody listens
    # Before the window closed the sweep leaves the endpoint alone...
    h.clock.now = (
        datetime.fromisoformat(endpoint["created_at"]) + CATCHUP_WINDOW - timedelta(seconds=1)
    )
    assert h.sweeper.sweep().caught_up == 0
    # ...after it, the events of tasks finished in it are created and sent.
    h.clock.now += timedelta(seconds=2)
    assert h.sweeper.sweep().caught_up == 1
    assert h.sweeper.sweep().caught_up == 0  # once
    h.deliver()
    (got,) = h.server.on("/hook")
    assert got.body == h.view_bytes(task_id)


def test_a_lost_flush_is_published_by_the_sweep(h: Hooks) -> None:
    h.register()
    h.run({"type": "echo", "payload": {}})
    assert len(h.messages()) == 1  # the flush's message, lost (dropped here)
    assert h.sweeper.sweep().events == 0  # within the grace the event is the flush's
    h.clock.now += EVENT_GRACE + timedelta(seconds=1)
    assert h.sweeper.sweep().events == 1
    assert h.sweeper.sweep().events == 0  # postponed: not republished every sweep
    h.deliver()
    assert len(h.server.on("/hook")) == 1


# The tenant API


def test_another_tenants_endpoint_is_a_404(h: Hooks) -> None:
    endpoint = h.register()
    for call in (
        lambda: h.service.get("globex", endpoint["id"]),
        lambda: h.service.delete("globex", endpoint["id"]),
        lambda: h.service.rotate("globex", endpoint["id"]),
        lambda: h.service.deliveries("globex", endpoint["id"], {}),
    ):
        with pytest.raises(NotFound):
            call()
    assert h.service.list("globex", {})["webhooks"] == []
    h.service.delete("acme", endpoint["id"])
    with pytest.raises(NotFound):
        h.service.get("acme", endpoint["id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["task.succeeded"]}, "url"),
        ({"url": "https://127.0.0.1/x", "events": ["task.succeeded"]}, "url"),
        ({"url": "https://example.com/x", "events": ["task.exploded"]}, "events.0"),
        ({"url": "https://example.com/x", "events": []}, "events"),
        ({"url": "https://example.com/x", "events": ["task.failed", "task.failed"]}, "events"),
        (
            {"url": "https://example.com/x", "events": ["task.failed"], "signature": "v2"},
            "signature",
        ),
        ({"url": "https://example.com/x", "events": ["task.failed"], "extra": 1}, "extra"),
    ],
)
def test_bad_registrations_are_422_naming_the_field(
    pipeline: Pipeline, body: dict[str, Any], field: str
) -> None:
    store = FirestoreWebhookStore(pipeline.db)
    strict = EndpointService(
        store,
        TaskSealer(pipeline.ring),
        Egress(allow_loopback=False).check,
        Notifier(lambda: None, "t", wait_s=1),
    )
    with pytest.raises(ValidationFailed) as refused:
        strict.register("acme", body)
    assert refused.value.field == field


def test_endpoints_page_newest_first(h: Hooks) -> None:
    ids = [h.register(path=f"/p{i}")["id"] for i in range(3)]
    first = h.service.list("acme", {"limit": "2"})
    assert [w["id"] for w in first["webhooks"]] == ids[::-1][:2]
    second = h.service.list("acme", {"limit": "2", "page_token": first["next_page_token"]})
    assert [w["id"] for w in second["webhooks"]] == ids[:1]
    assert "next_page_token" not in second


def test_the_per_task_key_is_one_per_tenant(h: Hooks) -> None:
    h.service.create_signing_key("acme", {"signature": "v1a"})
    with pytest.raises(Conflict, match="rotate"):
        h.service.create_signing_key("acme", {})


def test_a_key_ring_rotation_rewraps_webhook_keys_and_they_still_sign(h: Hooks) -> None:
    endpoint = h.register()
    rotated = rotate_keyring(h.p.ring)
    first = rewrap_endpoint_keys(h.store, TaskOpener(rotated), batch_size=1)
    assert (first.scanned, first.rewrapped, first.unreadable) == (1, 1, [])
    assert rewrap_endpoint_keys(h.store, TaskOpener(rotated)).rewrapped == 0  # converged
    (secret,) = h.p.db.collection("webhook_endpoints").document(endpoint["id"]).get().get("secrets")
    assert key_id_of(bytes(secret["data_key"])) == rotated.current_key_id
    # The old key can now be retired from the ring: the signing key still opens.
    document = json.loads(rotated.to_json())
    del document["keys"][h.p.ring.current_key_id]
    only_new = TaskOpener(KeyRing.from_json(json.dumps(document)))
    stored = h.store.get_endpoint(endpoint["id"])
    assert stored is not None
    (kept,) = stored.value.secrets
    assert open_key(only_new, "acme", endpoint["id"], stored.value.signature, kept).material == (
        base64.b64decode(endpoint["secret"].removeprefix("whsec_"))
    )
