"""Use cases wired to the real emulators, with a fresh key ring and topics per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import Settings
from shared.flow.concurrency import ConcurrencySlots
from shared.pubsub_fast import FastPublisher
from shared.security.crypto import TaskOpener, TaskSealer
from shared.security.keyring import KeyRing, generate_keyring
from shared.tasks.dispatch import PubSubTaskPublisher
from shared.tasks.documents import TaskDocuments
from shared.tasks.registry import TaskRegistry, load_registry
from shared.tasks.repository import FirestoreTaskRepository
from shared.tasks.runner import ProcessRunner
from shared.tasks.status import StatusService
from shared.tasks.submission import SubmitService
from shared.tasks.worker import Worker, WorkerPolicy
from shared.workflows.joins import Joins
from tests.conftest import observed_topics
from tests.integration.handlers import MODULES
from tests.support.pubsub import pull

PROJECT = "aia-test"
TASKS_TOPIC = "aia-tasks"
DEAD_LETTER_TOPIC = "aia-tasks-dead-letter"


@dataclass
class Pipeline:
    db: Any
    ring: KeyRing
    repository: FirestoreTaskRepository
    publisher: PubSubTaskPublisher
    submit: SubmitService
    status: StatusService
    worker: Worker
    registry: TaskRegistry
    runner: ProcessRunner
    subscriber: Any
    tasks_sub: str
    dead_letter_sub: str

    def pull(self, subscription: str, *, max_messages: int = 50) -> list[dict[str, Any]]:
        """Messages waiting on `subscription` (acked), as decoded JSON with attributes."""
        messages = pull(subscription, max_messages=max_messages)
        return [{"data": m.json(), "attributes": m.attributes} for m in messages]

    def worker_with(
        self, repository: FirestoreTaskRepository, policy: WorkerPolicy | None = None
    ) -> Worker:
        return Worker(
            repository,
            self.registry,
            self.publisher,
            self.runner,
            policy=policy,
            joins=repository.events if isinstance(repository.events, Joins) else None,
        )

    def limited_worker(self, tenant_limit: Callable[[str], int | None] | None = None) -> Worker:
        """This pipeline's worker with concurrency slots, and tenants' limits if given."""
        slots = ConcurrencySlots(self.db, lambda: self.publisher, clock=lambda: datetime.now(UTC))
        return Worker(
            self.repository,
            self.registry,
            self.publisher,
            self.runner,
            joins=self.worker._joins,
            slots=slots,
            tenant_limit=tenant_limit,
        )


@pytest.fixture(scope="session")
def runner() -> Iterator[ProcessRunner]:
    """One pool of handler processes for the session, as one worker instance keeps."""
    pool = ProcessRunner(MODULES)
    yield pool
    pool.close()


@pytest.fixture
def pipeline(emulators_clean: dict[str, str], runner: ProcessRunner) -> Iterator[Pipeline]:
    from google.cloud import pubsub_v1

    from shared.firestore_fast import FastClient

    db = FastClient(project=PROJECT)  # as shared.clients builds it
    subscriber = pubsub_v1.SubscriberClient()
    made = observed_topics(PROJECT, (TASKS_TOPIC, DEAD_LETTER_TOPIC))
    topics = {name: topic for name, (topic, _) in made.items()}
    subs = {name: sub for name, (_, sub) in made.items()}
    ring = generate_keyring()
    documents = TaskDocuments(TaskSealer(ring), TaskOpener(ring), retention=timedelta(days=30))
    repository = FirestoreTaskRepository(db, documents, metric_shards=4)
    publisher = PubSubTaskPublisher(FastPublisher(), topics[TASKS_TOPIC], topics[DEAD_LETTER_TOPIC])
    settings = Settings(project=PROJECT)
    registry = load_registry(MODULES)
    joins = Joins(repository, lambda: registry, lambda: publisher)
    repository.events = joins
    yield Pipeline(
        db=db,
        ring=ring,
        repository=repository,
        publisher=publisher,
        submit=SubmitService(
            repository, publisher, registry, TaskSealer(ring), settings, dependencies=joins
        ),
        status=StatusService(repository),
        worker=Worker(repository, registry, publisher, runner, joins=joins),
        registry=registry,
        runner=runner,
        subscriber=subscriber,
        tasks_sub=subs[TASKS_TOPIC],
        dead_letter_sub=subs[DEAD_LETTER_TOPIC],
    )
    subscriber.close()
