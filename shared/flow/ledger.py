"""The ledger: one entry per movement of a tenant's tokens, written in the commit that makes it.

Kinds, and what each moves:

- `reserve` — a submit held the task's price: available -> reserved. Written in
  the batch that stores the task, so no task exists without its hold and no
  hold without its task.
- `settle` — the task ended (succeeded, failed, cancelled): what it used,
  reserved -> spent. Written in the conditional commit that makes it terminal,
  which happens once per task; its id is `settle:<hold>`, so even a replayed
  batch could not write a second one (the create would fail the whole batch).
- `refund` — the unused rest of a settled hold: reserved -> available
  (`refund:<hold>`, same commit, only when something is returned).
- `grant` — tokens given by an operator, or a monthly refill
  (`grant:refill-YYYY-MM`, at most one per month).

Summed, the entries give the counters of the escrow shards: grants = granted,
settles = spent, reserves - settles - refunds = reserved, and grants -
reserves + refunds = available. `tests/integration/test_economy.py` checks
exactly that after a storm of concurrent submits.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from shared import queries
from shared.clients import SWEEP_CALL
from shared.errors import AIAError, BadRequest
from shared.flow import escrow
from shared.flow import metrics as flow_metrics
from shared.limits import loads_bounded
from shared.tasks.models import Task, TaskStatus, TokenHold

log = logging.getLogger("aia.ledger")

MAX_PAGE = 200
DEFAULT_PAGE = 50
_MAX_TOKEN_CHARS = 512


class Kind(StrEnum):
    RESERVE = "reserve"
    SETTLE = "settle"
    REFUND = "refund"
    GRANT = "grant"


def tenant_key(tenant_id: str) -> str:
    """A tenant id safe inside a document id (never '/')."""
    return quote(tenant_id, safe="")


def entry_ref(db: Any, tenant_id: str, kind: Kind, ref: str) -> Any:
    return db.collection(queries.LEDGER).document(f"{tenant_key(tenant_id)}:{kind.value}:{ref}")


def shard_ref(db: Any, tenant_id: str, shard: int) -> Any:
    return db.collection(queries.BUDGET_SHARDS).document(f"{tenant_key(tenant_id)}:{shard}")


def usage_ref(db: Any, tenant_id: str, period: str, shard: int) -> Any:
    return db.collection(queries.BUDGET_USAGE).document(f"{tenant_key(tenant_id)}:{period}:{shard}")


def entry(
    tenant_id: str,
    kind: Kind,
    amount: int,
    at: datetime,
    *,
    retention: timedelta,
    task_id: str | None = None,
    task_type: str | None = None,
    hold: str | None = None,
    reason: str = "",
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "kind": kind.value,
        "amount": amount,
        "task_id": task_id,
        "type": task_type,
        "hold": hold,
        "reason": reason,
        "at": at,
        "period": escrow.period_of(at),
        queries.EXPIRES_AT: at + retention,
    }


def used_tokens(task: Task) -> int:
    """What a task that ends pays from its hold.

    Its attempts' reports (`ctx.charge`), capped at the hold; a task whose
    handler never reported pays its price if an attempt of this run started,
    nothing if none did (it never ran: cancelled while queued, or unreadable).
    """
    hold = task.hold
    if hold is None:
        return 0
    if task.tokens_charged is not None:
        return max(0, min(task.tokens_charged, hold.tokens))
    return hold.tokens if task.attempts > task.attempt_base else 0


class BudgetEvents:
    """Settles a task's hold in the commit that makes it terminal (a `TaskEvents` follower).

    A tenant without a budget has no hold on its tasks: nothing is read or
    written for it here. With one, the terminal commit gains: the escrow shard
    (used to spent, the rest back to available), the period's usage shard,
    the ledger's settle (and refund) entry, a token metric shard. No read.
    """

    def __init__(
        self,
        db: Any,
        *,
        retention: timedelta,
        metric_shards: int,
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._retention = retention
        self._metric_shards = metric_shards
        self._clock = clock or (lambda: datetime.now(UTC))
        self._rng = rng or random.Random()  # noqa: S311 - spreads load, not a secret

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        from google.cloud.firestore import Increment

        hold = task.hold
        if hold is None or not status.terminal:
            return
        used = used_tokens(task)
        released = hold.tokens - used
        now = self._clock()
        tenant = task.tenant_id
        batch.set(
            shard_ref(self._db, tenant, hold.shard),
            {
                "tenant_id": tenant,
                "shard": hold.shard,
                "available": Increment(released),
                "reserved": Increment(-hold.tokens),
                "spent": Increment(used),
            },
            merge=True,
        )
        for kind, amount, reason in (
            (Kind.SETTLE, used, status.value),
            (Kind.REFUND, released, "unused"),
        ):
            if kind is Kind.REFUND and not amount:
                continue  # nothing returned: no refund entry
            batch.create(
                entry_ref(self._db, tenant, kind, hold.id),
                entry(
                    tenant,
                    kind,
                    amount,
                    now,
                    retention=self._retention,
                    task_id=task.task_id,
                    task_type=task.type,
                    hold=hold.id,
                    reason=reason,
                ),
            )
        if used:
            period = escrow.period_of(now)
            batch.set(
                usage_ref(self._db, tenant, period, hold.shard),
                {
                    "tenant_id": tenant,
                    "period": period,
                    "spent": Increment(used),
                    "by_type": {task.type: Increment(used)},
                    "by_day": {escrow.day_of(now): Increment(used)},
                },
                merge=True,
            )
            flow_metrics.record_tokens(
                batch, self._db, tenant, task.type, spent=used, shards=self._metric_shards
            )

    def flush(self, task: Task, status: TaskStatus) -> None:
        return None  # everything was in the commit

    def refund(self, tenant_id: str, holds: Sequence[TokenHold], *, reason: str) -> int:
        """Give back whole holds of tasks that were never stored; how many were refunded.

        Each refund entry's id is its hold's, so refunding a hold twice is
        refused by Firestore rather than counted twice.
        """
        from google.api_core.exceptions import AlreadyExists
        from google.cloud.firestore import Increment

        refunded = 0
        for hold in holds:
            if hold.tokens <= 0:
                continue
            batch = self._db.batch()
            batch.set(
                shard_ref(self._db, tenant_id, hold.shard),
                {
                    "tenant_id": tenant_id,
                    "shard": hold.shard,
                    "available": Increment(hold.tokens),
                    "reserved": Increment(-hold.tokens),
                },
                merge=True,
            )
            batch.create(
                entry_ref(self._db, tenant_id, Kind.REFUND, hold.id),
                entry(
                    tenant_id,
                    Kind.REFUND,
                    hold.tokens,
                    self._clock(),
                    retention=self._retention,
                    task_id=hold.id,
                    hold=hold.id,
                    reason=reason,
                ),
            )
            try:
                batch.commit(**SWEEP_CALL.kwargs())
            except AlreadyExists:
                continue  # refunded before
            refunded += 1
        return refunded


# -- reading the ledger ----------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    amount: int
    at: datetime
    task_id: str | None
    type: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "amount": self.amount,
            "at": self.at.isoformat(),
        }
        if self.task_id:
            body["task_id"] = self.task_id
        if self.type:
            body["type"] = self.type
        if self.reason:
            body["reason"] = self.reason
        return body


def encode_token(at: datetime, doc_id: str) -> str:
    raw = json.dumps({"a": at.isoformat(), "i": doc_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, tenant_id: str) -> tuple[datetime, str]:
    invalid = BadRequest("page_token is not a token this API issued", field="page_token")
    if len(token) > _MAX_TOKEN_CHARS:
        raise invalid
    try:
        data = loads_bounded(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), "page_token"
        )
        at = datetime.fromisoformat(data["a"])
        doc_id = data["i"]
    except AIAError as exc:
        raise invalid from exc
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise invalid from exc
    # A cursor on another tenant's entry would only skip: still, never accept one.
    if not isinstance(doc_id, str) or not doc_id.startswith(f"{tenant_key(tenant_id)}:"):
        raise invalid
    if at.tzinfo is None or "/" in doc_id:
        raise invalid
    return at, doc_id


def list_entries(
    db: Any,
    tenant_id: str,
    *,
    kind: Kind | None,
    limit: int,
    page_token: str | None,
    timeout_s: float,
) -> tuple[list[Entry], str | None]:
    """A page of the tenant's entries, newest first, and the token of the next page."""
    from google.cloud.firestore import FieldFilter

    spec = queries.LEDGER_BY_TENANT_KIND if kind is not None else queries.LEDGER_BY_TENANT
    values = {"tenant_id": tenant_id, "kind": kind.value if kind else None}
    query = db.collection(spec.collection)
    for field in spec.equals:
        query = query.where(filter=FieldFilter(field, "==", values[field]))
    for field, direction in spec.order:
        query = query.order_by(field, direction=direction)
    if page_token:
        at, doc_id = decode_token(page_token, tenant_id)
        query = query.start_after(
            {"at": at, "__name__": db.collection(queries.LEDGER).document(doc_id)}
        )
    snaps = list(query.limit(limit + 1).stream(timeout=timeout_s))
    entries = [_entry(s.id, s.to_dict() or {}) for s in snaps[:limit]]
    next_token = None
    if len(snaps) > limit:
        last = snaps[limit - 1]
        next_token = encode_token(last.get("at"), last.id)
    return entries, next_token


def _entry(doc_id: str, doc: dict[str, Any]) -> Entry:
    return Entry(
        id=doc_id.split(":", 1)[1] if ":" in doc_id else doc_id,
        kind=str(doc.get("kind")),
        amount=int(doc.get("amount") or 0),
        at=doc["at"],
        task_id=doc.get("task_id"),
        type=doc.get("type"),
        reason=str(doc.get("reason") or ""),
    )
