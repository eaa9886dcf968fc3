"""Token budgets on Firestore: holds in the submit's commit, grants, monthly refills, rebalances.

The balance is escrowed over N shard documents (`shared.flow.escrow`). A hold
reads one shard and adds to the submit's batch a write conditioned on that
shard's update time: of two submits that read the same shard version, one
commits and the other's whole batch (task included) fails and takes a fresh
hold. So a shard never goes below zero, no task is stored without its hold,
and no transaction (whose locks serialise contending writers for seconds) is
ever taken. A shard is written once by the hold and once by the settle of
each task drawn from it: N shards sustain N/2 tasks per second at about one
write per second each (200 for 100 tasks/s).

Reads per hold: the chosen shard (1). When it lacks the price, one query
reads the tenant's shards at a single instant; if their sum is short the
submit is refused (402) on that snapshot, which no concurrent hold could have
changed upwards; else a shard that fits is used, or tokens are gathered into
one (a rebalance, conditional writes) when none does.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import queries
from shared.clients import SUBMIT_WRITE, Deadline
from shared.errors import BudgetExhausted, StagedConflict, Unavailable, ValidationFailed
from shared.flow import escrow
from shared.flow import metrics as flow_metrics
from shared.flow.escrow import Move, ShardState
from shared.flow.ledger import Kind, entry, entry_ref, shard_ref
from shared.flow.limits_store import BudgetSpec, FlowConfig, FlowConfigStore, config_doc_id
from shared.tasks.models import TokenHold

log = logging.getLogger("aia.budgets")

# Holds that lose their race try again this many times before a 503.
MAX_HOLD_TRIES = 40
OPERATOR_CALL = Deadline(attempt_s=10.0, total_s=20.0)


@dataclass(frozen=True)
class HoldWrites:
    """A hold as writes for the submit's batch (a `Staged` of the task repository)."""

    db: Any
    tenant_id: str
    task_id: str
    task_type: str
    hold: TokenHold
    shard: ShardState
    at: datetime
    retention: timedelta
    metric_shards: int

    def stage(self, batch: Any) -> None:
        ref = shard_ref(self.db, self.tenant_id, self.shard.shard)
        changes = {
            "available": self.shard.available - self.hold.tokens,
            "reserved": self.shard.reserved + self.hold.tokens,
        }
        if self.shard.version is None:
            # Never written: create it, so a concurrent first hold loses cleanly.
            batch.create(ref, {"tenant_id": self.tenant_id, "shard": self.shard.shard, **changes})
        else:
            batch.update(
                ref, changes, option=self.db.write_option(last_update_time=self.shard.version)
            )
        batch.create(
            entry_ref(self.db, self.tenant_id, Kind.RESERVE, self.hold.id),
            entry(
                self.tenant_id,
                Kind.RESERVE,
                self.hold.tokens,
                self.at,
                retention=self.retention,
                task_id=self.task_id,
                task_type=self.task_type,
                hold=self.hold.id,
            ),
        )
        flow_metrics.record_tokens(
            batch,
            self.db,
            self.tenant_id,
            self.task_type,
            reserved=self.hold.tokens,
            shards=self.metric_shards,
        )


@dataclass(frozen=True)
class Snapshot:
    tenant_id: str
    shards: dict[int, ShardState]

    @property
    def totals(self) -> escrow.Totals:
        return escrow.totals(self.shards.values())


class BudgetBank:
    def __init__(
        self,
        db: Any,
        config: FlowConfigStore,
        *,
        default_shards: int,
        retention: timedelta,
        metric_shards: int,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._default_shards = default_shards
        self._retention = retention
        self._metric_shards = metric_shards
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()  # noqa: S311 - spreads load, not a secret
        # Per tenant: shard -> available as last seen here; only steers which shard to read.
        self._hints: dict[str, dict[int, int]] = {}
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._clock()

    # -- reads -------------------------------------------------------------------

    def _shard(self, tenant_id: str, shard: int, deadline: Deadline) -> ShardState:
        snap = shard_ref(self._db, tenant_id, shard).get(**deadline.kwargs())
        if not snap.exists:
            return ShardState(shard)
        return ShardState.of(shard, snap.to_dict(), snap.update_time)

    def snapshot(self, tenant_id: str, deadline: Deadline = SUBMIT_WRITE) -> Snapshot:
        """Every shard of the tenant, read by one query at one instant."""
        from google.cloud.firestore import FieldFilter

        query = self._db.collection(queries.BUDGET_SHARDS).where(
            filter=FieldFilter("tenant_id", "==", tenant_id)
        )
        found: dict[int, ShardState] = {}
        for snap in query.stream(**deadline.kwargs()):
            doc = snap.to_dict() or {}
            shard = doc.get("shard")
            if isinstance(shard, int):
                found[shard] = ShardState.of(shard, doc, snap.update_time)
        self._remember(tenant_id, {i: s.available for i, s in found.items()}, replace=True)
        return Snapshot(tenant_id, found)

    def _remember(self, tenant_id: str, seen: Mapping[int, int], *, replace: bool = False) -> None:
        with self._lock:
            hints = {} if replace else dict(self._hints.get(tenant_id, {}))
            hints.update(seen)
            self._hints[tenant_id] = hints

    def _estimates(self, tenant_id: str) -> dict[int, int]:
        with self._lock:
            return dict(self._hints.get(tenant_id, {}))

    # -- holds -------------------------------------------------------------------

    def hold(
        self,
        tenant_id: str,
        budget: BudgetSpec,
        *,
        task_id: str,
        hold_id: str,
        task_type: str,
        price: int,
    ) -> HoldWrites:
        """A shard holding `price` now, as writes for the submit's batch; 402 if none can."""
        for _ in range(MAX_HOLD_TRIES):
            chosen = escrow.pick(self._estimates(tenant_id), price, self._rng)
            state = self._shard(tenant_id, chosen, SUBMIT_WRITE) if chosen is not None else None
            if state is not None:
                self._remember(tenant_id, {state.shard: state.available})
            if state is None or state.available < price:
                state = self._from_snapshot(tenant_id, budget, price)
            if state is None:
                continue  # tokens were gathered into one shard: pick again
            return HoldWrites(
                db=self._db,
                tenant_id=tenant_id,
                task_id=task_id,
                task_type=task_type,
                hold=TokenHold(id=hold_id, tokens=price, shard=state.shard),
                shard=state,
                at=self._clock(),
                retention=self._retention,
                metric_shards=self._metric_shards,
            )
        raise Unavailable("the tenant's budget is contended; retry shortly")

    def _from_snapshot(self, tenant_id: str, budget: BudgetSpec, price: int) -> ShardState | None:
        snapshot = self.snapshot(tenant_id)
        balance = snapshot.totals.available
        if balance < price:
            raise BudgetExhausted(
                f"tenant {tenant_id} has {balance} tokens; this task costs {price}",
                balance=balance,
                price=price,
            )
        fits = {i: s.available for i, s in snapshot.shards.items() if s.available >= price}
        if self._rebalance(snapshot, escrow.plan_refill(snapshot.shards, budget.shards)):
            return None  # the versions just read are stale: pick again
        if fits:
            shard = escrow.pick(fits, price, self._rng)
            assert shard is not None
            return snapshot.shards[shard]
        # The balance covers the price but no shard does: gather it into one.
        self._rebalance(snapshot, escrow.plan_gather(snapshot.shards, price))
        return None

    def lost(self, held: HoldWrites) -> None:
        """The hold's commit lost its race: forget what this instance believed of that shard."""
        with self._lock:
            self._hints.get(held.tenant_id, {}).pop(held.shard.shard, None)

    def committed(self, held: HoldWrites) -> None:
        self._remember(held.tenant_id, {held.shard.shard: held.shard.available - held.hold.tokens})

    def _rebalance(self, snapshot: Snapshot, moves: list[Move]) -> bool:
        """Apply `moves` in one batch, each source conditioned on its version; False if raced."""
        if not moves:
            return False
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition
        from google.cloud.firestore import Increment

        taken: dict[int, int] = {}
        given: dict[int, int] = {}
        for move in moves:
            taken[move.source] = taken.get(move.source, 0) + move.tokens
            given[move.target] = given.get(move.target, 0) + move.tokens
        batch = self._db.batch()
        tenant = snapshot.tenant_id
        for shard, tokens in taken.items():
            state = snapshot.shards[shard]
            batch.update(
                shard_ref(self._db, tenant, shard),
                {
                    "available": state.available - tokens + given.pop(shard, 0),
                    "moved": state.moved - tokens,
                },
                option=self._db.write_option(last_update_time=state.version),
            )
        for shard, tokens in given.items():
            # Adding never overdraws: an increment needs no precondition.
            batch.set(
                shard_ref(self._db, tenant, shard),
                {
                    "tenant_id": tenant,
                    "shard": shard,
                    "available": Increment(tokens),
                    "moved": Increment(tokens),
                },
                merge=True,
            )
        try:
            batch.commit(**SUBMIT_WRITE.kwargs())
        except (FailedPrecondition, AlreadyExists):
            log.info("rebalance raced a hold; left for the next one", extra={"tenant": tenant})
            return False
        finally:
            self.forget_hints(tenant)
        return True

    def forget_hints(self, tenant_id: str) -> None:
        with self._lock:
            self._hints.pop(tenant_id, None)

    # -- grants and refills -------------------------------------------------------

    def _add_tokens(self, batch: Any, snapshot: Snapshot, shards: int, tokens: int) -> None:
        from google.cloud.firestore import Increment

        for shard, amount in escrow.plan_grant(snapshot.shards, shards, tokens).items():
            batch.set(
                shard_ref(self._db, snapshot.tenant_id, shard),
                {
                    "tenant_id": snapshot.tenant_id,
                    "shard": shard,
                    "available": Increment(amount),
                    "granted": Increment(amount),
                },
                merge=True,
            )

    def grant(self, tenant_id: str, tokens: int, *, reason: str = "") -> str:
        """Give `tokens` to the tenant (creating its budget if it has none); the entry's id."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
            raise ValidationFailed("a grant is a whole number of tokens > 0", field="tokens")
        config, _ = self._config.fresh(tenant_id, OPERATOR_CALL)
        budget = config.budget or self._new_budget(tenant_id)
        snapshot = self.snapshot(tenant_id, OPERATOR_CALL)
        grant_id = uuid.uuid4().hex
        batch = self._db.batch()
        self._add_tokens(batch, snapshot, budget.shards, tokens)
        batch.create(
            entry_ref(self._db, tenant_id, Kind.GRANT, grant_id),
            entry(
                tenant_id,
                Kind.GRANT,
                tokens,
                self._clock(),
                retention=self._retention,
                reason=reason or "operator grant",
            ),
        )
        batch.commit(**OPERATOR_CALL.kwargs())
        self.forget_hints(tenant_id)
        return grant_id

    def _new_budget(self, tenant_id: str) -> BudgetSpec:
        """Store a budget (one-off grants only) for a tenant that had none."""
        budget = BudgetSpec(monthly=0, shards=self._default_shards, period=None)
        self._write_budget(tenant_id, budget)
        return budget

    def _write_budget(self, tenant_id: str, budget: BudgetSpec, option: Any = None) -> None:
        ref = self._db.collection(queries.FLOW_CONFIG).document(config_doc_id(tenant_id))
        data = {"tenant_id": tenant_id, "budget": budget.model_dump(), "updated_at": self._clock()}
        if option is None:
            ref.set(data, merge=True, **OPERATOR_CALL.kwargs())
        else:
            ref.update(data, option=option, **OPERATOR_CALL.kwargs())
        self._config.forget(tenant_id)

    def set_budget(self, tenant_id: str, *, monthly: int, shards: int | None = None) -> BudgetSpec:
        """Set the monthly allowance (0: grants only); this month gets it at once.

        Set for a month not yet refilled, the balance is topped up to the
        allowance now. Raised within a month already refilled, the difference
        is granted; lowered, nothing is taken back.
        """
        if isinstance(monthly, bool) or not isinstance(monthly, int) or monthly < 0:
            raise ValidationFailed("the monthly allowance is a whole number >= 0", field="monthly")
        config, _ = self._config.fresh(tenant_id, OPERATOR_CALL)
        current = config.budget
        count = shards or (current.shards if current else self._default_shards)
        if current is not None and count < current.shards:
            raise ValidationFailed(
                f"a budget's shards can grow, not shrink ({current.shards} now)", field="shards"
            )
        period = escrow.period_of(self._clock())
        marker = current.period if current else None
        self._write_budget(tenant_id, BudgetSpec(monthly=monthly, shards=count, period=marker))
        if marker == period and current is not None and monthly > current.monthly:
            self.grant(
                tenant_id,
                monthly - current.monthly,
                reason=f"monthly allowance raised to {monthly} for {period}",
            )
        self.refill_if_due(tenant_id)
        return self._config.fresh(tenant_id, OPERATOR_CALL)[0].budget or BudgetSpec(shards=count)

    def refill_if_due(self, tenant_id: str, config: FlowConfig | None = None) -> FlowConfig:
        """Top the balance up to the monthly allowance once per UTC month; exactly once.

        One batch: the configuration's period marker (conditioned on its
        version), the refill's grant entry (its id names the month: a second
        create fails the batch), and the tokens as increments. Concurrent
        submits at the boundary race on that batch; one wins, the others read
        the marker again and go on.
        """
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        period = escrow.period_of(self._clock())
        if config is not None and not _due(config, period):
            return config
        for _ in range(5):
            config, version = self._config.fresh(tenant_id)
            budget = config.budget
            if budget is None or not _due(config, period) or version is None:
                return config
            snapshot = self.snapshot(tenant_id)
            tokens = escrow.top_up(snapshot.shards.values(), budget.monthly)
            batch = self._db.batch()
            marker = budget.model_copy(update={"period": period})
            batch.update(
                self._db.collection(queries.FLOW_CONFIG).document(config_doc_id(tenant_id)),
                {"budget": marker.model_dump(), "updated_at": self._clock()},
                option=self._db.write_option(last_update_time=version),
            )
            batch.create(
                entry_ref(self._db, tenant_id, Kind.GRANT, f"refill-{period}"),
                entry(
                    tenant_id,
                    Kind.GRANT,
                    tokens,
                    self._clock(),
                    retention=self._retention,
                    reason=f"monthly refill to {budget.monthly} for {period}",
                ),
            )
            self._add_tokens(batch, snapshot, budget.shards, tokens)
            try:
                batch.commit(**SUBMIT_WRITE.kwargs())
            except (FailedPrecondition, AlreadyExists):
                continue  # someone refilled (or changed the configuration) first
            finally:
                self._config.forget(tenant_id)
                self.forget_hints(tenant_id)
            return self._config.fresh(tenant_id)[0]
        raise StagedConflict("the budget's monthly refill is contended; retry shortly")


def _due(config: FlowConfig, period: str) -> bool:
    budget = config.budget
    return budget is not None and budget.monthly > 0 and budget.period != period
