"""Flow control wired for tests (on the fake store or the emulator), and the ledger's sums."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import queries
from shared.config import Settings
from shared.flow import escrow
from shared.flow.admission import Admission
from shared.flow.budgets import BudgetBank
from shared.flow.ledger import BudgetEvents, Kind
from shared.flow.limits_store import FlowConfigStore, LimitSpec
from shared.flow.metrics import RefusalCounter
from shared.flow.ratelimits import RateLimiter
from shared.flow.usage import UsageService
from shared.operations.counters import TaskCounters
from shared.security.crypto import TaskOpener, TaskSealer
from shared.security.keyring import KeyRing
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TaskMessage, TaskStatus
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import FirestoreTaskRepository
from shared.tasks.submission import SubmitService

RETENTION = timedelta(days=400)


class MovableClock:
    """A UTC clock tests move by hand (the budget's period boundary, say)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[TaskMessage] = []

    def publish(self, message: TaskMessage, attributes: dict[str, str] | None = None) -> None:
        self.published.append(message)

    def dead_letter(self, data: bytes, attributes: dict[str, str]) -> None:
        return None


@dataclass
class Flow:
    db: Any
    repository: FirestoreTaskRepository
    submit: SubmitService
    admission: Admission
    bank: BudgetBank
    config: FlowConfigStore
    usage: UsageService
    publisher: Any


def build_flow(
    db: Any,
    registry: TaskRegistry,
    ring: KeyRing,
    *,
    clock: Callable[[], datetime] | None = None,
    rate_clock: Callable[[], float] | None = None,
    publisher: Any = None,
    default_shards: int = 16,
    default_limit: LimitSpec | None = None,
    prices: dict[str, int] | None = None,
    seed: int = 0,
) -> Flow:
    clock = clock or (lambda: datetime.now(UTC))
    config = FlowConfigStore(db, cache_s=0.0)
    bank = BudgetBank(
        db,
        config,
        default_shards=default_shards,
        retention=RETENTION,
        metric_shards=4,
        clock=clock,
        rng=random.Random(seed),
    )
    events = BudgetEvents(db, retention=RETENTION, metric_shards=4, clock=clock)
    documents = TaskDocuments(TaskSealer(ring), TaskOpener(ring), retention=timedelta(days=30))
    # Counters buffered as deployed (AIA_METRICS_FLUSH_S): no counter write in a task's commits.
    counters = TaskCounters(db, shards=4, flush_s=3600.0)
    repository = FirestoreTaskRepository(
        db, documents, metric_shards=4, events=events, counters=counters
    )
    limiter = (
        RateLimiter(db, clock=rate_clock, rng=random.Random(seed))
        if rate_clock
        else RateLimiter(db, rng=random.Random(seed))
    )
    admission = Admission(
        db,
        config,
        limiter,
        bank,
        registry,
        prices=prices or {},
        default_limit=default_limit,
        refusals=RefusalCounter(shards=4),
    )
    publisher = publisher or RecordingPublisher()
    submit = SubmitService(
        repository,
        publisher,
        registry,
        TaskSealer(ring),
        Settings(project="aia-test"),
        admission=admission,
    )
    return Flow(
        db, repository, submit, admission, bank, config, UsageService(db, config, bank), publisher
    )


def finish(
    flow: Flow,
    tenant_id: str,
    task_id: str,
    status: TaskStatus,
    *,
    charged: int | None = None,
) -> bool:
    """Run the worker's path for one attempt's outcome: load, take the lease, finish."""
    from shared.tasks.models import TaskError

    opened = flow.repository.load(tenant_id, task_id)
    now = datetime.now(UTC)
    lease = flow.repository.take_lease(opened, now, now + timedelta(minutes=1))
    assert lease is not None
    error = None if status is TaskStatus.SUCCEEDED else TaskError(code="x", message="failed")
    stored = flow.repository.finish(
        lease,
        status=status,
        result={"ok": True} if status is TaskStatus.SUCCEEDED else None,
        error=error,
        duration_s=0.01,
        until=now.timestamp() + 30,
        charged=charged,
    )
    return stored is status


@dataclass(frozen=True)
class LedgerSums:
    grants: int
    reserves: int
    settles: int
    refunds: int
    entries: int

    @property
    def available(self) -> int:
        return self.grants - self.reserves + self.refunds

    @property
    def reserved(self) -> int:
        return self.reserves - self.settles - self.refunds


def ledger_sums(db: Any, tenant_id: str) -> LedgerSums:
    from google.cloud.firestore import FieldFilter

    query = db.collection(queries.LEDGER).where(filter=FieldFilter("tenant_id", "==", tenant_id))
    sums = dict.fromkeys(Kind, 0)
    count = 0
    for snap in query.stream():
        doc = snap.to_dict() or {}
        sums[Kind(doc["kind"])] += int(doc["amount"])
        count += 1
    return LedgerSums(
        sums[Kind.GRANT], sums[Kind.RESERVE], sums[Kind.SETTLE], sums[Kind.REFUND], count
    )


def assert_books_balance(flow: Flow, tenant_id: str) -> escrow.Totals:
    """Escrow shards and ledger agree to the token, and each shard keeps its identity."""
    snapshot = flow.bank.snapshot(tenant_id)
    totals = snapshot.totals
    sums = ledger_sums(flow.db, tenant_id)
    assert totals.balanced, totals
    assert all(s.balanced for s in snapshot.shards.values()), snapshot.shards
    assert all(s.available >= 0 and s.reserved >= 0 for s in snapshot.shards.values())
    assert (totals.granted, totals.spent) == (sums.grants, sums.settles), (totals, sums)
    assert (totals.available, totals.reserved) == (sums.available, sums.reserved), (totals, sums)
    return totals
