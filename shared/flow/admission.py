"""Admission of a submit: the one place flow control says yes or no, and what a yes costs.

`admit` runs before anything is stored: it reads the tenant's configuration
(cached), claims a slot under each rate limit that applies, and refills the
budget if a new month began. `reserve` then gives what the submit's commit
must carry: the task's fields and the writes of its hold. Parts still to come
(concurrency limits and keys, priorities) add their own checks to `admit` and
their own staged writes to `reserve`, beside these, without touching the
submit path again.

A tenant with neither a budget nor a limit (nor a default limit configured)
costs one cached configuration read per instance per TTL, and nothing per task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import BudgetExhausted, RateLimited
from shared.flow.budgets import BudgetBank, HoldWrites
from shared.flow.limits_store import BudgetSpec, FlowConfigStore, LimitSpec
from shared.flow.metrics import RefusalCounter
from shared.flow.ratelimits import RateLimiter, Verdict, headers
from shared.tasks.models import Task
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import Rehold, Staged

log = logging.getLogger("aia.admission")


@dataclass(frozen=True)
class Admitted:
    """A submit flow control let through, and what it must carry."""

    tenant_id: str
    task_type: str
    price: int
    budget: BudgetSpec | None  # None: the tenant has no budget, nothing is held
    verdicts: tuple[Verdict, ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        """RateLimit fields for the answer (none for a tenant without limits)."""
        return headers(self.verdicts)


@dataclass(frozen=True)
class Reservation:
    """What the submit's commit carries for flow control: task fields and staged writes."""

    fields: dict[str, Any] = field(default_factory=dict)
    writes: tuple[Staged, ...] = ()
    holds: tuple[HoldWrites, ...] = ()


NOTHING = Reservation()


class Admission:
    def __init__(
        self,
        db: Any,
        config: FlowConfigStore,
        limiter: RateLimiter,
        bank: BudgetBank,
        registry: TaskRegistry,
        *,
        prices: Mapping[str, int],
        default_limit: LimitSpec | None,
        refusals: RefusalCounter,
    ) -> None:
        self._db = db
        self._config = config
        self._limiter = limiter
        self._bank = bank
        self._registry = registry
        self._prices = dict(prices)
        self._default_limit = default_limit
        self._refusals = refusals

    def price(self, task_type: str) -> int:
        """Operators' price for the type (`AIA_TASK_PRICES`), else its registration's."""
        if task_type in self._prices:
            return self._prices[task_type]
        return self._registry.get(task_type).price

    def admit(self, tenant_id: str, task_type: str) -> Admitted:
        """Rate limits, and the month's refill; raises RateLimited. Stores no task."""
        self._refusals.flush_if_due(self._db)
        config = self._config.get(tenant_id)
        limits = config.limits_for(task_type, self._default_limit)
        verdicts: list[Verdict] = []
        if limits:
            try:
                verdicts = self._limiter.check(tenant_id, limits)
            except RateLimited:
                self._refusals.note(tenant_id, "rate")
                raise
        budget = config.budget
        if budget is not None:
            budget = self._bank.refill_if_due(tenant_id, config).budget
        return Admitted(tenant_id, task_type, self.price(task_type), budget, tuple(verdicts))

    def reserve(self, admitted: Admitted, task_id: str, hold_id: str | None = None) -> Reservation:
        """The hold of a budgeted tenant's task; raises BudgetExhausted (402) when it cannot."""
        if admitted.budget is None or admitted.price <= 0:
            return NOTHING
        try:
            held = self._bank.hold(
                admitted.tenant_id,
                admitted.budget,
                task_id=task_id,
                hold_id=hold_id or task_id,
                task_type=admitted.task_type,
                price=admitted.price,
            )
        except BudgetExhausted:
            self._refusals.note(admitted.tenant_id, "budget")
            raise
        return Reservation(
            fields={"hold": held.hold, "tokens_charged": None}, writes=(held,), holds=(held,)
        )

    def lost(self, reservation: Reservation) -> None:
        for held in reservation.holds:
            self._bank.lost(held)

    def committed(self, reservation: Reservation) -> None:
        for held in reservation.holds:
            self._bank.committed(held)

    def rehold(self, task: Task, replay: int) -> Rehold | None:
        """A fresh hold for a replayed task's next run (its first was settled when it failed)."""
        config = self._config.get(task.tenant_id)
        if config.budget is None:
            return None
        budget = self._bank.refill_if_due(task.tenant_id, config).budget
        admitted = Admitted(task.tenant_id, task.type, self.price(task.type), budget)
        reservation = self.reserve(admitted, task.task_id, hold_id=f"{task.task_id}.r{replay}")
        if not reservation.holds:
            return None
        hold = reservation.holds[0].hold
        return Rehold(
            fields={"hold": hold.model_dump(), "tokens_charged": None}, writes=reservation.writes
        )
