"""Composition root: each use case built once per instance from settings and lazy clients.

Tests build use cases directly with fakes, or call `reset()` after changing
the environment.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from shared.clients import (
    PUBLISH_WAIT_S,
    firestore_client,
    keys_firestore_client,
    publisher,
    reset_clients,
    topic_path,
)
from shared.config import get_settings, task_modules

# Background paths (a worker's dead letter, the sweep) may wait longer than a client.
BACKGROUND_PUBLISH_WAIT_S = 5.0

if TYPE_CHECKING:
    from shared.flow.admission import Admission
    from shared.flow.budgets import BudgetBank
    from shared.flow.ledger import BudgetEvents
    from shared.flow.limits_store import FlowConfigStore
    from shared.flow.usage import UsageService
    from shared.operations.redispatch import Redispatcher
    from shared.security.apikeys import ApiKeys
    from shared.security.keyring import KeyRing
    from shared.tasks.dispatch import PubSubTaskPublisher
    from shared.tasks.registry import TaskRegistry
    from shared.tasks.repository import FirestoreTaskRepository
    from shared.tasks.status import StatusService
    from shared.tasks.submission import SubmitService
    from shared.tasks.worker import Worker


@functools.cache
def task_registry() -> TaskRegistry:
    """AIA's built-in types and the team's own (`AIA_TASK_MODULES`, or the `tasks` package)."""
    from shared.tasks.registry import BUILTIN_MODULES, load_registry

    team = task_modules() or _team_package()
    return load_registry((*BUILTIN_MODULES, *team))


def _team_package() -> tuple[str, ...]:
    # Beside shared/ (the checkout, or a deploy bundle), never a same-named installed package.
    root = Path(__file__).resolve().parent.parent
    return ("tasks",) if (root / "tasks" / "__init__.py").is_file() else ()


@functools.cache
def keyring() -> KeyRing:
    from shared.security.keyring import KeyRing

    return KeyRing.from_json(get_settings().keyring_text())


@functools.cache
def task_repository() -> FirestoreTaskRepository:
    from shared.security.crypto import TaskOpener, TaskSealer
    from shared.tasks.documents import TaskDocuments
    from shared.tasks.repository import FirestoreTaskRepository

    settings = get_settings()
    ring = keyring()
    # A public-only ring (submit_task's) can seal but never open.
    opener = TaskOpener(ring) if ring.can_decrypt() else None
    documents = TaskDocuments(
        TaskSealer(ring), opener, retention=timedelta(days=settings.task_retention_days)
    )
    return FirestoreTaskRepository(
        firestore_client(),
        documents,
        metric_shards=settings.metrics_shards,
        events=budget_events(),
    )


@functools.cache
def budget_events() -> BudgetEvents:
    """Settles budgeted tasks' holds in their terminal commit (nothing for the others)."""
    from shared.flow.ledger import BudgetEvents

    settings = get_settings()
    return BudgetEvents(
        firestore_client(),
        retention=timedelta(days=settings.ledger_retention_days),
        metric_shards=settings.metrics_shards,
    )


@functools.cache
def flow_config() -> FlowConfigStore:
    from shared.flow.limits_store import FlowConfigStore

    return FlowConfigStore(firestore_client(), cache_s=get_settings().flow_cache_s)


@functools.cache
def budget_bank() -> BudgetBank:
    from shared.flow.budgets import BudgetBank

    settings = get_settings()
    return BudgetBank(
        firestore_client(),
        flow_config(),
        default_shards=settings.budget_shards,
        retention=timedelta(days=settings.ledger_retention_days),
        metric_shards=settings.metrics_shards,
    )


@functools.cache
def admission() -> Admission:
    from shared.flow.admission import Admission
    from shared.flow.limits_store import parse_limit
    from shared.flow.metrics import RefusalCounter
    from shared.flow.ratelimits import RateLimiter

    settings = get_settings()
    return Admission(
        firestore_client(),
        flow_config(),
        RateLimiter(firestore_client()),
        budget_bank(),
        task_registry(),
        prices=settings.task_prices,
        default_limit=parse_limit(settings.rate_limit_default),
        refusals=RefusalCounter(shards=settings.metrics_shards),
    )


@functools.cache
def usage_service() -> UsageService:
    from shared.flow.usage import UsageService

    return UsageService(firestore_client(), flow_config(), budget_bank())


@functools.cache
def task_publisher(wait_s: float = PUBLISH_WAIT_S) -> PubSubTaskPublisher:
    from shared.tasks.dispatch import PubSubTaskPublisher

    settings = get_settings()
    return PubSubTaskPublisher(
        publisher(),
        topic_path(settings.tasks_topic),
        topic_path(settings.dead_letter_topic),
        wait_s=wait_s,
    )


@functools.cache
def api_keys() -> ApiKeys:
    from shared.security.apikeys import ApiKeys, FirestoreApiKeyStore

    return ApiKeys(
        FirestoreApiKeyStore(keys_firestore_client()), cache_s=get_settings().api_key_cache_s
    )


@functools.cache
def submit_service() -> SubmitService:
    from shared.security.crypto import TaskSealer
    from shared.tasks.submission import SubmitService

    return SubmitService(
        task_repository(),
        task_publisher(),
        task_registry(),
        TaskSealer(keyring()),
        get_settings(),
        admission=admission(),
    )


@functools.cache
def status_service() -> StatusService:
    from shared.tasks.status import StatusService

    return StatusService(task_repository())


@functools.cache
def worker() -> Worker:
    from shared.tasks.runner import ProcessRunner
    from shared.tasks.worker import Worker

    registry = task_registry()
    return Worker(
        task_repository(),
        registry,
        task_publisher(BACKGROUND_PUBLISH_WAIT_S),
        ProcessRunner(registry.modules),
    )


@functools.cache
def redispatcher() -> Redispatcher:
    from shared.operations.redispatch import Redispatcher
    from shared.tasks.repository import FirestoreTaskRepository

    settings = get_settings()
    # Built without key material: the sweep moves ids, never task data.
    repository = FirestoreTaskRepository(
        firestore_client(), None, metric_shards=settings.metrics_shards
    )
    after = timedelta(seconds=settings.redispatch_after_s)
    return Redispatcher(repository, task_publisher(BACKGROUND_PUBLISH_WAIT_S), after=after)


def reset() -> None:
    """Forget every cached provider, client and setting (stopping the worker's processes)."""
    if worker.cache_info().currsize:
        worker().close()
    from shared.operations.metrics import forget_cached

    forget_cached()
    for provider in (
        task_registry,
        keyring,
        task_repository,
        task_publisher,
        api_keys,
        submit_service,
        status_service,
        worker,
        redispatcher,
        budget_events,
        flow_config,
        budget_bank,
        admission,
        usage_service,
    ):
        provider.cache_clear()
    reset_clients()
