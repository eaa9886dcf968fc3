"""Admission of a submit: the one place flow control says yes or no, and what a yes costs.

`admit` runs before anything is stored: it reads the tenant's configuration
(cached) and refills the budget if a new month began. `reserve` then plans
what the submit's commit must carry, or refuses: a slot under each rate limit
(429 if none is free), the budget's hold (402 if the balance cannot cover the
price), as the task's fields and staged writes. One commit stores the task
with all of it, or nothing. Parts still to come (concurrency limits and keys,
priorities) add their own plans to `reserve`, beside these, without touching
the submit path again.

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
from shared.flow.gcra import Limit
from shared.flow.limits_store import BudgetSpec, FlowConfigStore, LimitSpec
from shared.flow.metrics import RefusalCounter
from shared.flow.ratelimits import Claim, RateLimiter, headers
from shared.tasks.models import Task, TokenHold
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import Rehold, Staged

log = logging.getLogger("aia.admission")


@dataclass(frozen=True)
class Admitted:
    """What flow control knows of a submit before it plans its writes."""

    tenant_id: str
    task_type: str
    price: int
    budget: BudgetSpec | None  # None: the tenant has no budget, nothing is held
    limits: tuple[tuple[str, Limit], ...] = ()


@dataclass(frozen=True)
class Reservation:
    """What the submit's commit carries for flow control: task fields and staged writes."""

    fields: dict[str, Any] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    holds: tuple[HoldWrites, ...] = ()

    @property
    def writes(self) -> tuple[Staged, ...]:
        return (*self.claims, *self.holds)

    @property
    def headers(self) -> dict[str, str]:
        """RateLimit fields for the answer (none for a tenant without limits)."""
        return headers([c.verdict for c in self.claims])


NOTHING = Reservation()


@dataclass(frozen=True)
class GroupHold:
    """One hold for tasks created together (a workflow's nodes), split into theirs.

    `writes` reserves the total from one escrow shard in the group's first
    commit; each member's `TokenHold` names that shard, so each settles its own
    part in its own terminal commit, as a task submitted alone does.
    """

    writes: HoldWrites
    holds: dict[str, TokenHold]  # member -> its part (members priced 0 have none)


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
        """The tenant's limits and budget (refilled if a new month began). Writes no task."""
        self._refusals.flush_if_due(self._db)
        config = self._config.get(tenant_id)
        limits = tuple(config.limits_for(task_type, self._default_limit))
        budget = config.budget
        if budget is not None:
            budget = self._bank.refill_if_due(tenant_id, config).budget
        return Admitted(tenant_id, task_type, self.price(task_type), budget, limits)

    def reserve(self, admitted: Admitted, task_id: str, hold_id: str | None = None) -> Reservation:
        """Slots under the rate limits and the budget's hold, planned for the submit's commit.

        Raises RateLimited (429) or BudgetExhausted (402); either way nothing
        is written. Each try of the commit plans afresh (a lost race is read
        again).
        """
        if not admitted.limits and (admitted.budget is None or admitted.price <= 0):
            return NOTHING
        try:
            claims = tuple(self._limiter.plan(admitted.tenant_id, admitted.limits))
        except RateLimited:
            self._refused(admitted.tenant_id, "rate")
            raise
        if admitted.budget is None or admitted.price <= 0:
            return Reservation(claims=claims)
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
            self._limiter.done(claims, committed=False)
            self._refused(admitted.tenant_id, "budget")
            raise
        except BaseException:
            self._limiter.done(claims, committed=False)
            raise
        return Reservation(
            fields={"hold": held.hold, "tokens_charged": None}, claims=claims, holds=(held,)
        )

    def _refused(self, tenant_id: str, reason: str) -> None:
        self._refusals.note(tenant_id, reason)
        self._refusals.flush_if_due(self._db)

    def release(
        self,
        reservation: Reservation,
        *,
        committed: bool,
        raced: bool = False,
        commit_time: Any = None,
    ) -> None:
        """After the submit's commit: it stored the reservation, lost a race, or failed."""
        self._limiter.done(
            reservation.claims, committed=committed, raced=raced, commit_time=commit_time
        )
        for held in reservation.holds:
            if committed:
                self._bank.committed(held)
            elif raced:
                self._bank.lost(held)

    def budgeted(self, tenant_id: str) -> bool:
        """Whether the tenant has a budget (its configuration, cached per instance)."""
        return self._config.get(tenant_id).budget is not None

    def reserve_group(
        self,
        tenant_id: str,
        group_id: str,
        members: Mapping[str, str],
        *,
        label: str = "workflow",
    ) -> GroupHold | None:
        """Hold the price of every member (member id -> task type) at once; None without a budget.

        Raises BudgetExhausted (402) when the balance cannot cover them all: the
        group is created whole or not at all.
        """
        config = self._config.get(tenant_id)
        if config.budget is None:
            return None
        budget = self._bank.refill_if_due(tenant_id, config).budget
        assert budget is not None
        prices = {member: self.price(task_type) for member, task_type in members.items()}
        total = sum(prices.values())
        if total <= 0:
            return None
        try:
            held = self._bank.hold(
                tenant_id,
                budget,
                task_id=group_id,
                hold_id=group_id,
                task_type=label,
                price=total,
            )
        except BudgetExhausted:
            self._refused(tenant_id, "budget")
            raise
        shard = held.hold.shard
        holds = {
            member: TokenHold(id=member, tokens=price, shard=shard)
            for member, price in prices.items()
            if price > 0
        }
        return GroupHold(held, holds)

    def group_done(self, group: GroupHold, *, committed: bool) -> None:
        """After the group's first commit: it stored the hold, or lost its shard's race."""
        if committed:
            self._bank.committed(group.writes)
        else:
            self._bank.lost(group.writes)

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
