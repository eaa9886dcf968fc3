"""Flow-control metrics, in the task metrics' shard collection and scraped with it.

- Tokens reserved and spent, by tenant and type: exact, as `Increment`s in the
  very commits that hold and settle (one shard document of `METRIC_SHARDS`
  per tenant and shard, a map by type), so only budgeted tenants' tasks write.
- Admissions refused, by tenant and reason (budget, rate): counted in memory
  and flushed at most every `FLUSH_S` per instance, by the next request or,
  if none comes, by a timer (and at exit). A refusal must stay cheap (a
  rate-limited burst is refused from a cache, with no I/O); an instance that
  is killed loses at most its last `FLUSH_S` of refusal counts, never a token.

Label cardinality is bounded by tenants x types (tokens) and tenants x 2
(refusals). Importing this module imports no Google or Prometheus library.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from shared.queries import METRIC_SHARDS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("aia.flow.metrics")

TOKENS = "tokens"
REFUSED = "refused"
REASONS = ("budget", "rate")
FLUSH_S = 10.0


def _ref(db: Any, metric: str, tenant_id: str, shards: int) -> Any:
    shard = random.randrange(max(1, shards))  # noqa: S311 - spreads load, not a secret
    return db.collection(METRIC_SHARDS).document(f"{metric}:{quote(tenant_id, safe='')}:{shard}")


def record_tokens(
    writer: Any,
    db: Any,
    tenant_id: str,
    task_type: str,
    *,
    reserved: int = 0,
    spent: int = 0,
    shards: int,
) -> None:
    """Count tokens held or spent for one task, inside the caller's batch."""
    from google.cloud.firestore import Increment

    data: dict[str, Any] = {"metric": TOKENS, "tenant_id": tenant_id}
    if reserved:
        data["reserved"] = {task_type: Increment(reserved)}
    if spent:
        data["spent"] = {task_type: Increment(spent)}
    writer.set(_ref(db, TOKENS, tenant_id, shards), data, merge=True)


class RefusalCounter:
    """Refused admissions per (tenant, reason), flushed to shards at most every `flush_s`."""

    def __init__(
        self,
        *,
        shards: int,
        flush_s: float = FLUSH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shards = shards
        self._flush_s = flush_s
        self._clock = clock
        self._pending: dict[tuple[str, str], int] = {}
        self._last = -math.inf  # an instance's first refusal is written at once
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._db: Any = None
        atexit.register(self._flush_at_exit)

    def note(self, tenant_id: str, reason: str) -> None:
        with self._lock:
            key = (tenant_id, reason)
            self._pending[key] = self._pending.get(key, 0) + 1

    def pending(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._pending)

    def flush_if_due(self, db: Any, *, timeout_s: float = 1.0) -> bool:
        """Write what was counted if `flush_s` passed since the last flush (best effort).

        Counts that are not due yet get a timer, so a refusal followed by no
        other request still reaches the scrape within `flush_s`.
        """
        with self._lock:
            self._db = db
            if not self._pending:
                return False
            wait = self._flush_s - (self._clock() - self._last)
            if wait > 0:
                self._arm(wait)
                return False
            counts, self._pending = self._pending, {}
            self._last = self._clock()
        try:
            self._write(db, counts, timeout_s)
        except Exception:
            log.warning("refusal counts not flushed; kept for the next flush", exc_info=True)
            with self._lock:
                for key, n in counts.items():
                    self._pending[key] = self._pending.get(key, 0) + n
                self._arm(self._flush_s)
            return False
        return True

    def _arm(self, wait_s: float) -> None:
        # Caller holds the lock.
        if self._timer is None and self._flush_s > 0:
            self._timer = threading.Timer(wait_s, self._flush_from_timer)
            self._timer.daemon = True
            self._timer.start()

    def _flush_from_timer(self) -> None:
        with self._lock:
            self._timer = None
            db = self._db
        if db is not None:
            self.flush_if_due(db)

    def _flush_at_exit(self) -> None:
        # The process is ending: there is no one left to tell of a failure.
        with self._lock:
            self._last = -math.inf
            db = self._db
        if db is not None:
            with contextlib.suppress(Exception):
                self.flush_if_due(db)

    def _write(self, db: Any, counts: Mapping[tuple[str, str], int], timeout_s: float) -> None:
        from google.cloud.firestore import Increment

        by_tenant: dict[str, dict[str, int]] = {}
        for (tenant, reason), n in counts.items():
            by_tenant.setdefault(tenant, {})[reason] = n
        batch = db.batch()
        for tenant, reasons in by_tenant.items():
            data: dict[str, Any] = {"metric": REFUSED, "tenant_id": tenant}
            data.update({reason: Increment(n) for reason, n in reasons.items()})
            batch.set(_ref(db, REFUSED, tenant, self._shards), data, merge=True)
        batch.commit(timeout=timeout_s)


@dataclass(frozen=True)
class FlowFigures:
    reserved: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (tenant, type)
    spent: Mapping[tuple[str, str], int] = field(default_factory=dict)
    refused: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (tenant, reason)


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def fold(docs: Iterable[Mapping[str, Any]]) -> FlowFigures:
    """Sum the flow shards among a scrape's shard documents (others are ignored)."""
    reserved: dict[tuple[str, str], int] = {}
    spent: dict[tuple[str, str], int] = {}
    refused: dict[tuple[str, str], int] = {}
    for doc in docs:
        tenant = doc.get("tenant_id")
        if not isinstance(tenant, str):
            continue
        if doc.get("metric") == TOKENS:
            for name, into in (("reserved", reserved), ("spent", spent)):
                by_type = doc.get(name)
                for task_type, n in (by_type if isinstance(by_type, dict) else {}).items():
                    into[(tenant, task_type)] = into.get((tenant, task_type), 0) + _as_int(n)
        elif doc.get("metric") == REFUSED:
            for reason in REASONS:
                if reason in doc:
                    key = (tenant, reason)
                    refused[key] = refused.get(key, 0) + _as_int(doc.get(reason))
    return FlowFigures(reserved, spent, refused)


def families(figures: FlowFigures) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily

    for name, text, values in (
        ("aia_tokens_reserved", "Tokens held by submits, by tenant and type.", figures.reserved),
        ("aia_tokens_spent", "Tokens settled as used, by tenant and type.", figures.spent),
    ):
        family = CounterMetricFamily(name, text, labels=["tenant", "type"])
        for (tenant, task_type), n in sorted(values.items()):
            family.add_metric([tenant, task_type], n)
        yield family
    refused = CounterMetricFamily(
        "aia_admissions_refused",
        "Submits refused by flow control, by tenant and reason (budget, rate).",
        labels=["tenant", "reason"],
    )
    for (tenant, reason), n in sorted(figures.refused.items()):
        refused.add_metric([tenant, reason], n)
    yield refused


def as_json(figures: FlowFigures) -> dict[str, Any]:
    def nest(values: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (outer, inner), n in sorted(values.items()):
            out.setdefault(outer, {})[inner] = n
        return out

    return {
        "aia_tokens_reserved_total": nest(figures.reserved),
        "aia_tokens_spent_total": nest(figures.spent),
        "aia_admissions_refused_total": nest(figures.refused),
    }
