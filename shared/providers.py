"""Composition root: each use case built once per instance from settings and lazy clients.

Tests build use cases directly with fakes, or call `reset()` after changing
the environment.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from shared.clients import (
    PUBLISH_WAIT_S,
    WEBHOOK_DELIVERY,
    fast_publisher,
    firestore_client,
    keys_firestore_client,
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
    from shared.operations.counters import TaskCounters
    from shared.operations.redispatch import Redispatcher
    from shared.scheduling.service import ScheduleService
    from shared.scheduling.ticker import Ticker
    from shared.security.apikeys import ApiKeys
    from shared.security.keyring import KeyRing
    from shared.tasks.dispatch import PubSubTaskPublisher
    from shared.tasks.documents import TaskDocuments
    from shared.tasks.events import AllEvents
    from shared.tasks.registry import TaskRegistry
    from shared.tasks.repository import FirestoreTaskRepository
    from shared.tasks.status import StatusService
    from shared.tasks.submission import SubmitService
    from shared.tasks.worker import Worker
    from shared.webhooks.delivery import Deliverer, Sweeper
    from shared.webhooks.egress import Egress
    from shared.webhooks.endpoints import EndpointService, TaskWebhookCheck
    from shared.webhooks.outbox import Notifier, WebhookEvents
    from shared.webhooks.store import FirestoreWebhookStore
    from shared.workflows.joins import Joins
    from shared.workflows.service import WorkflowService


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
def task_documents() -> TaskDocuments:
    from shared.security.crypto import TaskOpener, TaskSealer
    from shared.tasks.documents import TaskDocuments

    ring = keyring()
    # A public-only ring (submit_task's) can seal but never open.
    opener = TaskOpener(ring) if ring.can_decrypt() else None
    return TaskDocuments(TaskSealer(ring), opener, retention=_retention())


def _retention() -> timedelta:
    return timedelta(days=get_settings().task_retention_days)


@functools.cache
def task_repository() -> FirestoreTaskRepository:
    from shared.tasks.events import LazyEvents
    from shared.tasks.repository import FirestoreTaskRepository

    repository = FirestoreTaskRepository(
        firestore_client(),
        task_documents(),
        metric_shards=get_settings().metrics_shards,
        counters=counters(),
    )
    repository.events = LazyEvents(lambda: task_events(repository))
    return repository


def task_events(repository: FirestoreTaskRepository) -> AllEvents:
    """What follows a task's end: workflows' failure policy, joins and dependents, webhooks."""
    from shared.tasks.events import AllEvents
    from shared.workflows.events import WorkflowEvents

    joins = task_joins(repository)
    # A terminal commit counts the parent's join, settles a budget hold and stages the
    # webhook event together; fail_fast cancels the rest of a workflow before its
    # dependents fail one by one.
    webhooks = webhook_events()
    budgets = budget_events()
    workflows = WorkflowEvents(repository, joins, webhooks, refunds=budgets)
    return AllEvents(workflows, joins, budgets, webhooks)


@functools.cache
def task_joins(repository: FirestoreTaskRepository) -> Joins:
    """The fan-out join store over `repository`, following its terminal transitions."""
    from shared.workflows.joins import Joins

    # The publisher is built on first use: task_status never needs one.
    return Joins(
        repository,
        task_registry,
        lambda: task_publisher(BACKGROUND_PUBLISH_WAIT_S),
        admission=admission,
    )


@functools.cache
def counters() -> TaskCounters:
    """This instance's buffered task counters, flushed every AIA_METRICS_FLUSH_S."""
    from shared.operations.counters import TaskCounters

    settings = get_settings()
    return TaskCounters(
        firestore_client(), shards=settings.metrics_shards, flush_s=settings.metrics_flush_s
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
    from shared.flow.limits_store import parse_limit
    from shared.flow.usage import UsageService

    settings = get_settings()
    return UsageService(
        firestore_client(),
        flow_config(),
        budget_bank(),
        default_limit=parse_limit(settings.rate_limit_default),
        default_max_running=settings.tenant_max_running or None,
    )


@functools.cache
def task_publisher(wait_s: float = PUBLISH_WAIT_S) -> PubSubTaskPublisher:
    from shared.tasks.dispatch import PubSubTaskPublisher

    settings = get_settings()
    return PubSubTaskPublisher(
        fast_publisher(),
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

    repository = task_repository()
    return SubmitService(
        repository,
        task_publisher(),
        task_registry(),
        TaskSealer(keyring()),
        get_settings(),
        dependencies=task_joins(repository),
        webhook_check=_check_task_webhook,
        admission=admission(),
    )


def _check_task_webhook(tenant_id: str, url: str) -> None:
    # Built for the first task that names a webhook: the others never load the feature.
    task_webhook_check()(tenant_id, url)


@functools.cache
def status_service() -> StatusService:
    from shared.tasks.status import StatusService

    return StatusService(task_repository())


def _utcnow() -> datetime:
    return datetime.now(UTC)


@functools.cache
def worker() -> Worker:
    from shared.flow.concurrency import ConcurrencySlots
    from shared.tasks.runner import ProcessRunner
    from shared.tasks.worker import Worker

    registry = task_registry()
    runner = ProcessRunner(registry.modules)
    # At a cold start its handler process starts while the Google clients load.
    runner.warm()
    repository = task_repository()
    publisher = task_publisher(BACKGROUND_PUBLISH_WAIT_S)
    default_limit = get_settings().tenant_max_running or None

    def tenant_limit(tenant_id: str) -> int | None:
        # The tenant's own, else the default: one cached read per tenant per instance.
        return flow_config().get(tenant_id).max_running or default_limit

    return Worker(
        repository,
        registry,
        publisher,
        runner,
        joins=task_joins(repository),
        slots=ConcurrencySlots(firestore_client(), lambda: publisher, clock=_utcnow),
        tenant_limit=tenant_limit,
    )


@functools.cache
def redispatcher() -> Redispatcher:
    from shared.operations.redispatch import Redispatcher
    from shared.tasks.repository import FirestoreTaskRepository

    settings = get_settings()
    # Built without key material: the sweep moves ids, never task data.
    repository = FirestoreTaskRepository(
        firestore_client(), None, metric_shards=settings.metrics_shards, counters=counters()
    )
    repository.events = task_events(repository)
    after = timedelta(seconds=settings.redispatch_after_s)
    return Redispatcher(repository, task_publisher(BACKGROUND_PUBLISH_WAIT_S), after=after)


@functools.cache
def workflow_service() -> WorkflowService:
    from shared.security.crypto import TaskSealer
    from shared.workflows.service import WorkflowService
    from shared.workflows.store import WorkflowStore

    repository = task_repository()
    return WorkflowService(
        WorkflowStore(repository),
        repository,
        task_publisher(),
        task_registry(),
        sealer=TaskSealer(keyring()),
        settings=get_settings(),
        admission=admission(),
    )


@functools.cache
def schedule_service() -> ScheduleService:
    from shared.scheduling.schedules import FirestoreScheduleRepository, ScheduleDocuments
    from shared.scheduling.service import ScheduleService
    from shared.security.crypto import TaskSealer

    # The public ring seals a schedule's payload; only the ticker opens it.
    documents = ScheduleDocuments(TaskSealer(keyring()), None)
    return ScheduleService(
        FirestoreScheduleRepository(firestore_client()),
        documents,
        task_registry(),
        get_settings(),
    )


@functools.cache
def ticker() -> Ticker:
    from shared.scheduling.schedules import FirestoreScheduleRepository, ScheduleDocuments
    from shared.scheduling.ticker import Ticker
    from shared.scheduling.timers import FirestoreTimers
    from shared.security.crypto import TaskOpener, TaskSealer

    ring = keyring()
    return Ticker(
        FirestoreTimers(firestore_client()),
        FirestoreScheduleRepository(firestore_client()),
        ScheduleDocuments(TaskSealer(ring), TaskOpener(ring)),
        submit_service(),
        task_publisher(BACKGROUND_PUBLISH_WAIT_S),
    )


# -- webhooks ------------------------------------------------------------------


@functools.cache
def webhook_store() -> FirestoreWebhookStore:
    from shared.webhooks.store import FirestoreWebhookStore

    return FirestoreWebhookStore(firestore_client())


@functools.cache
def webhook_notifier(wait_s: float = PUBLISH_WAIT_S) -> Notifier:
    from shared.webhooks.outbox import Notifier

    return Notifier(fast_publisher, topic_path(get_settings().webhook_events_topic), wait_s=wait_s)


@functools.cache
def webhook_egress() -> Egress:
    from shared.webhooks.egress import Egress, system_resolver

    # The API resolves a URL to check it while a client waits: a short DNS budget there.
    return Egress(
        allow_loopback=get_settings().webhooks_allow_loopback, resolve=system_resolver(1.0)
    )


@functools.cache
def webhook_events() -> WebhookEvents:
    from shared.webhooks.outbox import EndpointDirectory, WebhookEvents, directory_loader

    store = webhook_store()
    directory = EndpointDirectory(directory_loader(store), ttl_s=get_settings().webhook_cache_s)
    return WebhookEvents(directory, store, webhook_notifier(), retention=_retention())


@functools.cache
def endpoint_service() -> EndpointService:
    from shared.security.crypto import TaskSealer
    from shared.webhooks.endpoints import EndpointService

    return EndpointService(
        webhook_store(), TaskSealer(keyring()), webhook_egress().check, webhook_notifier()
    )


@functools.cache
def task_webhook_check() -> TaskWebhookCheck:
    from shared.security.crypto import TaskSealer
    from shared.webhooks.endpoints import TaskWebhookCheck

    return TaskWebhookCheck(
        webhook_store(),
        TaskSealer(keyring()),
        webhook_egress().check,
        cache_s=get_settings().webhook_cache_s,
    )


@functools.cache
def deliverer() -> Deliverer:
    from shared.security.crypto import TaskOpener
    from shared.webhooks.delivery import Deliverer, StatusBodies
    from shared.webhooks.egress import Egress
    from shared.webhooks.endpoints import signer_id
    from shared.webhooks.store import FirestoreWebhookStore

    opener = TaskOpener(keyring())
    return Deliverer(
        FirestoreWebhookStore(firestore_client(), deadline=WEBHOOK_DELIVERY),
        StatusBodies(status_service(), firestore_client(), task_documents(), workflow_service),
        opener,
        Egress(allow_loopback=get_settings().webhooks_allow_loopback),
        signer_id=lambda tenant_id: signer_id(opener, tenant_id),
        retention=_retention(),
    )


@functools.cache
def webhook_sweeper() -> Sweeper:
    from shared.webhooks.delivery import Sweeper

    return Sweeper(
        webhook_store(), webhook_notifier(BACKGROUND_PUBLISH_WAIT_S), retention=_retention()
    )


def reset() -> None:
    """Forget every cached provider, client and setting (stopping the worker's processes)."""
    if worker.cache_info().currsize:
        worker().close()
    from shared.operations.metrics import forget_cached

    forget_cached()
    if counters.cache_info().currsize:
        counters().flush()
    for provider in (
        counters,
        task_registry,
        keyring,
        task_documents,
        task_repository,
        task_joins,
        task_publisher,
        api_keys,
        submit_service,
        status_service,
        worker,
        redispatcher,
        workflow_service,
        schedule_service,
        ticker,
        webhook_store,
        webhook_notifier,
        webhook_egress,
        webhook_events,
        endpoint_service,
        task_webhook_check,
        deliverer,
        webhook_sweeper,
        budget_events,
        flow_config,
        budget_bank,
        admission,
        usage_service,
    ):
        provider.cache_clear()
    reset_clients()
