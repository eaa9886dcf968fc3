"""A tenant's flow configuration: budget, rate limits and max_running, one document per tenant.

Every submit needs it, so each instance keeps what it read for a short TTL
(`AIA_FLOW_CACHE_S`, 10 s): a tenant without a budget or limits costs one read
per instance per TTL, nothing per task. What operators change takes effect
within that TTL. The worker reads the tenant's `max_running` the same way.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import ConfigDict, Field, ValidationError, field_validator

from shared.clients import AUTH_READ, SUBMIT_WRITE, Deadline
from shared.deferred import DeferredModel
from shared.errors import ConfigurationError, ValidationFailed
from shared.flow.gcra import Limit
from shared.tasks.models import MAX_RUNNING

FLOW_CONFIG = "flow_config"
# The key of the limit on all of a tenant's submits; any other key is a task type.
ALL_TYPES = "*"
MAX_BUDGET_SHARDS = 500  # a rebalance or top-up is one batch; Firestore takes 500 writes


class LimitSpec(DeferredModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    rate: float = Field(gt=0, le=100_000)
    burst: int = Field(ge=1, le=100_000)

    @field_validator("rate")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("rate must be finite")
        return value

    def limit(self) -> Limit:
        return Limit(self.rate, self.burst)


class BudgetSpec(DeferredModel):
    """A tenant's budget: how its balance is refilled, over how many escrow shards."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    monthly: int = Field(default=0, ge=0)  # 0: one-off grants only
    shards: int = Field(ge=1, le=MAX_BUDGET_SHARDS)
    # The UTC month ("2026-12") whose refill is done; None until the first.
    period: str | None = None


class FlowConfig(DeferredModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant_id: str
    budget: BudgetSpec | None = None
    limits: dict[str, LimitSpec] = Field(default_factory=dict)
    # At most this many of the tenant's tasks run at once (shared.flow.concurrency).
    max_running: int | None = Field(default=None, ge=1, le=MAX_RUNNING)

    def limits_for(self, task_type: str, default: LimitSpec | None) -> list[tuple[str, Limit]]:
        """(scope, limit) pairs a submit of `task_type` must pass: the tenant's, then the type's."""
        found: list[tuple[str, Limit]] = []
        tenant_wide = self.limits.get(ALL_TYPES, default)
        if tenant_wide is not None:
            found.append((ALL_TYPES, tenant_wide.limit()))
        per_type = self.limits.get(task_type)
        if per_type is not None:
            found.append((task_type, per_type.limit()))
        return found


def config_doc_id(tenant_id: str) -> str:
    return quote(tenant_id, safe="")


def parse_limit(text: str) -> LimitSpec | None:
    """`AIA_RATE_LIMIT_DEFAULT`: "RATE/BURST" (e.g. "20/10"), or empty for none."""
    if not text.strip():
        return None
    rate, sep, burst = text.partition("/")
    try:
        return LimitSpec(
            rate=float(rate), burst=int(burst) if sep else max(1, math.ceil(float(rate)))
        )
    except (ValueError, ValidationError) as exc:
        raise ConfigurationError(f"rate limit {text!r} is not RATE/BURST: {exc}") from exc


class FlowConfigStore:
    """Reads and writes `flow_config/{tenant}`; `get` answers from a per-instance TTL cache."""

    def __init__(
        self,
        db: Any,
        *,
        cache_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._cache_s = cache_s
        self._clock = clock
        self._cached: dict[str, tuple[float, FlowConfig, Any]] = {}
        self._lock = threading.Lock()

    def _ref(self, tenant_id: str) -> Any:
        return self._db.collection(FLOW_CONFIG).document(config_doc_id(tenant_id))

    def get(self, tenant_id: str) -> FlowConfig:
        with self._lock:
            hit = self._cached.get(tenant_id)
        if hit is not None and self._clock() - hit[0] < self._cache_s:
            return hit[1]
        return self.fresh(tenant_id, AUTH_READ)[0]

    def fresh(self, tenant_id: str, deadline: Deadline = SUBMIT_WRITE) -> tuple[FlowConfig, Any]:
        """The stored configuration and its version (None if there is no document)."""
        snap = self._ref(tenant_id).get(**deadline.kwargs())
        config = self._decode(tenant_id, snap.to_dict() if snap.exists else None)
        version = snap.update_time if snap.exists else None
        self.remember(config, version)
        return config, version

    def remember(self, config: FlowConfig, version: Any) -> None:
        with self._lock:
            self._cached[config.tenant_id] = (self._clock(), config, version)

    def forget(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._cached.clear()
            else:
                self._cached.pop(tenant_id, None)

    @staticmethod
    def _decode(tenant_id: str, doc: Mapping[str, Any] | None) -> FlowConfig:
        if not doc:
            return FlowConfig(tenant_id=tenant_id)
        try:
            return FlowConfig.model_validate({**doc, "tenant_id": tenant_id})
        except ValidationError as exc:
            # An operator's typo must not open the gates: refuse loudly instead.
            raise ConfigurationError(
                f"flow configuration of {tenant_id!r} is invalid: {exc}"
            ) from exc

    # -- operators' writes ------------------------------------------------------

    def set_limit(self, tenant_id: str, scope: str, spec: LimitSpec | None) -> FlowConfig:
        """Store (or with None remove) the limit on `scope` (ALL_TYPES or a task type)."""
        from google.cloud.firestore import DELETE_FIELD

        if not scope or len(scope) > 100:
            raise ValidationFailed("the type must be 1-100 characters", field="type")
        value: Any = DELETE_FIELD if spec is None else spec.model_dump()
        # A merge of the nested map touches limits.<scope> alone, whatever the scope's characters.
        self._ref(tenant_id).set(
            {"tenant_id": tenant_id, "updated_at": datetime.now(UTC), "limits": {scope: value}},
            merge=True,
            **SUBMIT_WRITE.kwargs(),
        )
        self.forget(tenant_id)
        return self.fresh(tenant_id)[0]

    def set_max_running(self, tenant_id: str, limit: int | None) -> FlowConfig:
        """Store (or with None remove) how many of the tenant's tasks may run at once."""
        from google.cloud.firestore import DELETE_FIELD

        if limit is not None and not 1 <= limit <= MAX_RUNNING:
            raise ValidationFailed(f"max_running must be 1-{MAX_RUNNING}", field="max_running")
        self._ref(tenant_id).set(
            {
                "tenant_id": tenant_id,
                "updated_at": datetime.now(UTC),
                "max_running": DELETE_FIELD if limit is None else limit,
            },
            merge=True,
            **SUBMIT_WRITE.kwargs(),
        )
        self.forget(tenant_id)
        return self.fresh(tenant_id)[0]
