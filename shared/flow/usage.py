"""A tenant's view of its budget: `GET /usage` and `GET /usage/ledger`.

`/usage` reads the budget (1), the tenant's escrow shards and this month's
usage shards (one query each: only the documents that exist are read). It
never writes: a month whose refill no submit has triggered yet shows the
balance as it stands, with `refill_due`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import Field

from shared import queries
from shared.clients import STATUS_READ
from shared.deferred import DeferredModel
from shared.errors import ValidationFailed
from shared.flow import escrow
from shared.flow.budgets import BudgetBank
from shared.flow.ledger import DEFAULT_PAGE, MAX_PAGE, Kind, list_entries
from shared.flow.limits_store import ALL_TYPES, FlowConfig, FlowConfigStore, LimitSpec


class UsagePeriod(DeferredModel):
    id: str = Field(description="The month, UTC: `YYYY-MM`")
    start: datetime
    end: datetime
    spent: int
    by_type: dict[str, int]
    by_day: dict[str, int] = Field(description="Spent per UTC day (`YYYY-MM-DD`)")


class RateLimitView(DeferredModel):
    rate: float = Field(description="Sustained submits per second")
    burst: int = Field(description="Submits at once")


class UsageLimits(DeferredModel):
    """The limits the caller's submits and tasks run under (its own, else the defaults)."""

    rate: dict[str, RateLimitView] = Field(
        description="By scope: `*` for all of the tenant's submits, else a task type"
    )
    max_running: int | None = Field(
        default=None, description="The tenant's tasks running at once; absent: no limit"
    )


class UsageView(DeferredModel):
    """The caller's budget (absent fields: no budget, `budgeted: false`) and its limits."""

    tenant_id: str
    budgeted: bool
    limits: UsageLimits
    balance: int | None = Field(default=None, description="Tokens available for new tasks")
    reserved: int | None = Field(default=None, description="Held by tasks not yet finished")
    spent_total: int | None = None
    granted_total: int | None = None
    monthly: int | None = Field(default=None, description="The monthly refill, if any")
    refill_due: bool | None = None
    period: UsagePeriod | None = None


class LedgerEntry(DeferredModel):
    id: str
    kind: Kind
    amount: int
    at: datetime
    task_id: str | None = None
    type: str | None = None
    reason: str | None = None


class LedgerPage(DeferredModel):
    entries: list[LedgerEntry]
    next_page_token: str | None = Field(
        default=None, description="Present when there are more: pass it as `page_token`"
    )


class UsageService:
    def __init__(
        self,
        db: Any,
        config: FlowConfigStore,
        bank: BudgetBank,
        *,
        default_limit: LimitSpec | None = None,
        default_max_running: int | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._bank = bank
        self._default_limit = default_limit
        self._default_max_running = default_max_running

    def usage(self, tenant_id: str) -> dict[str, Any]:
        config, _ = self._config.fresh(tenant_id, STATUS_READ)
        budget = config.budget
        now = self._bank.now()
        period = escrow.period_of(now)
        start, end = escrow.period_bounds(period)
        limits = self._limits(config)
        if budget is None:
            return {"tenant_id": tenant_id, "budgeted": False, "limits": limits}
        totals = self._bank.snapshot(tenant_id, STATUS_READ).totals
        spent, by_type, by_day = self._period_usage(tenant_id, period)
        return {
            "tenant_id": tenant_id,
            "budgeted": True,
            "limits": limits,
            "balance": totals.available,
            "reserved": totals.reserved,
            "spent_total": totals.spent,
            "granted_total": totals.granted,
            "monthly": budget.monthly or None,
            "refill_due": bool(budget.monthly) and budget.period != period,
            "period": {
                "id": period,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "spent": spent,
                "by_type": by_type,
                "by_day": by_day,
            },
        }

    def _limits(self, config: FlowConfig) -> dict[str, Any]:
        rate = dict(config.limits)
        if ALL_TYPES not in rate and self._default_limit is not None:
            rate[ALL_TYPES] = self._default_limit
        limits: dict[str, Any] = {
            "rate": {scope: {"rate": s.rate, "burst": s.burst} for scope, s in sorted(rate.items())}
        }
        max_running = config.max_running or self._default_max_running
        if max_running is not None:
            limits["max_running"] = max_running
        return limits

    def _period_usage(
        self, tenant_id: str, period: str
    ) -> tuple[int, dict[str, int], dict[str, int]]:
        from google.cloud.firestore import FieldFilter

        spec = queries.USAGE_OF_PERIOD
        query = self._db.collection(spec.collection)
        for field, value in zip(spec.equals, (tenant_id, period), strict=True):
            query = query.where(filter=FieldFilter(field, "==", value))
        spent = 0
        by_type: dict[str, int] = {}
        by_day: dict[str, int] = {}
        for snap in query.stream(**STATUS_READ.kwargs()):
            doc = snap.to_dict() or {}
            spent += _whole(doc.get("spent"))
            _add(by_type, doc.get("by_type"))
            _add(by_day, doc.get("by_day"))
        return spent, dict(sorted(by_type.items())), dict(sorted(by_day.items()))

    def ledger(self, tenant_id: str, args: Mapping[str, str]) -> dict[str, Any]:
        unknown = set(args) - {"limit", "page_token", "kind"}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationFailed(f"unknown query parameter {name!r}", field=name)
        try:
            limit = int(args.get("limit", DEFAULT_PAGE))
        except ValueError:
            raise ValidationFailed("limit must be a whole number", field="limit") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed(f"limit must be 1-{MAX_PAGE}", field="limit")
        kind_text = args.get("kind")
        try:
            kind = Kind(kind_text) if kind_text else None
        except ValueError:
            known = ", ".join(k.value for k in Kind)
            raise ValidationFailed(f"kind must be one of {known}", field="kind") from None
        entries, token = list_entries(
            self._db,
            tenant_id,
            kind=kind,
            limit=limit,
            page_token=_page_token(args),
            timeout_s=STATUS_READ.attempt_s,
        )
        body: dict[str, Any] = {"entries": [e.to_json() for e in entries]}
        if token:
            body["next_page_token"] = token
        return body


def _page_token(args: Mapping[str, str]) -> str | None:
    token = args.get("page_token")
    if token is not None and not token:
        raise ValidationFailed("page_token must not be empty", field="page_token")
    return token


def _whole(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _add(into: dict[str, int], values: Any) -> None:
    for key, n in (values if isinstance(values, dict) else {}).items():
        into[str(key)] = into.get(str(key), 0) + _whole(n)
