"""Rate limits enforced across every instance: GCRA slots claimed in sharded Firestore documents.

`shared.flow.gcra` says which slots a request may claim; each shard document
holds the last slot it handed out. An admission claims one slot with one
write conditioned on that shard's update time (a `create` for a shard never
used), so two instances can never hand out the same slot, and a limit of r
per second costs about r/K writes per second per document.

Each instance remembers the last slot it saw per shard. Those are lower
bounds (a shard's last slot only grows), so when they already show every
candidate shard spent, the request is refused from memory, with no I/O: a
client hammering a limit costs Firestore nothing beyond the admitted rate.
A claim reuses the remembered version when it has one (no read); a stale one
fails its precondition and is read afresh.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared import queries
from shared.clients import AUTH_READ, Deadline
from shared.errors import RateLimited
from shared.flow.gcra import NONE_CLAIMED, Limit
from shared.flow.limits_store import ALL_TYPES

# A claim reads and writes within the submit's budget; the write carries its own deadline.
CLAIM_CALL = Deadline(attempt_s=1.0, total_s=1.5)
MAX_CLAIM_TRIES = 8
SHARD_TTL = timedelta(days=1)


@dataclass
class _Seen:
    last: int = NONE_CLAIMED
    version: Any = None  # update time of the document when `last` was read or written
    exists: bool | None = None  # None: not known here


@dataclass(frozen=True)
class Verdict:
    """One limit's answer for one request."""

    scope: str
    limit: Limit
    admitted: bool
    remaining: int
    reset_s: int  # seconds until the window is whole again (admitted) or a slot frees (refused)


def policy_name(scope: str) -> str:
    """The policy's identifier in the RateLimit fields: an sf-string, quotes and escapes."""
    name = "tenant" if scope == ALL_TYPES else f"type:{scope}"
    safe = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in name)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def headers(verdicts: Sequence[Verdict]) -> dict[str, str]:
    """`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for `verdicts`.

    A policy is stated as its sustained quota per window (q per w seconds) with
    the burst as a vendor parameter; the service limit gives the slots free in
    the window now (r) and the seconds until it is whole again, or until the
    next slot frees on a refusal (t).
    """
    if not verdicts:
        return {}
    policies, limits = [], []
    for verdict in verdicts:
        window = 1 if verdict.limit.rate >= 1 else math.ceil(1 / verdict.limit.rate)
        quota = max(1, math.floor(verdict.limit.rate * window))
        name = policy_name(verdict.scope)
        policies.append(f"{name};q={quota};w={window};aia-burst={verdict.limit.burst}")
        limits.append(f"{name};r={verdict.remaining};t={verdict.reset_s}")
    return {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(limits)}


class RateLimiter:
    def __init__(
        self,
        db: Any,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - spreads load, not a secret
        self._seen: dict[tuple[str, str, str, int], _Seen] = {}
        self._lock = threading.Lock()

    def _ref(self, tenant_id: str, scope: str, limit: Limit, shard: int) -> Any:
        name = ":".join((quote(tenant_id, safe=""), quote(scope, safe=""), limit.key, str(shard)))
        return self._db.collection(queries.RATE_SHARDS).document(name)

    def _get_seen(self, key: tuple[str, str, str, int]) -> _Seen:
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                seen = self._seen[key] = _Seen()
            return _Seen(seen.last, seen.version, seen.exists)

    def _put_seen(self, key: tuple[str, str, str, int], seen: _Seen) -> None:
        with self._lock:
            known = self._seen.get(key)
            # Lower bounds only grow: never forget a later slot for an earlier one, except
            # for a document removed by its TTL (its slots are long past).
            if known is None or seen.last >= known.last or seen.exists is False:
                self._seen[key] = seen

    def _lasts(self, tenant_id: str, scope: str, limit: Limit) -> dict[int, int]:
        with self._lock:
            return {
                shard: seen.last
                for (t, s, k, shard), seen in self._seen.items()
                if (t, s, k) == (tenant_id, scope, limit.key)
            }

    def check(self, tenant_id: str, limits: Sequence[tuple[str, Limit]]) -> list[Verdict]:
        """Claim a slot under each limit in turn; raise RateLimited at the first that refuses.

        A refusal by a later limit leaves the earlier slots claimed: they
        count against the tenant as requests made, as any rate limit counts
        refused requests it saw.
        """
        verdicts = []
        for scope, limit in limits:
            verdict = self.claim(tenant_id, scope, limit)
            verdicts.append(verdict)
            if not verdict.admitted:
                raise RateLimited(
                    f"over the rate limit {limit.rate:g}/s (burst {limit.burst}) on "
                    f"{'all submits' if scope == ALL_TYPES else 'type ' + scope}; "
                    f"retry after {verdict.reset_s} s",
                    retry_after_s=max(1, verdict.reset_s),
                    headers=headers(verdicts),
                    policies=(policy_name(scope).strip('"'),),
                )
        return verdicts

    def claim(self, tenant_id: str, scope: str, limit: Limit) -> Verdict:
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

        for _ in range(MAX_CLAIM_TRIES):
            now = self._clock()
            lasts = self._lasts(tenant_id, scope, limit)
            open_shards = [
                shard
                for shard in limit.candidate_shards(now)
                if limit.claimable(shard, lasts.get(shard, NONE_CLAIMED), now) is not None
            ]
            if not open_shards:
                return self._refused(scope, limit, lasts, now)
            shard = self._rng.choice(open_shards)
            key = (tenant_id, scope, limit.key, shard)
            seen = self._get_seen(key)
            if seen.exists is None:
                seen = self._read(tenant_id, scope, limit, shard)
                self._put_seen(key, seen)
            slot = limit.claimable(shard, seen.last, now)
            if slot is None:
                continue
            try:
                version = self._write(tenant_id, scope, limit, shard, slot=slot, seen=seen)
            except (FailedPrecondition, AlreadyExists, NotFound):
                # Another instance claimed from this shard since (or its TTL removed it).
                self._put_seen(key, self._read(tenant_id, scope, limit, shard))
                continue
            self._put_seen(key, _Seen(slot, version, True))
            lasts[shard] = slot
            remaining = limit.free_in_window(lasts, now)
            whole_again = math.ceil((limit.burst - remaining) / limit.rate)
            return Verdict(scope, limit, True, remaining, max(0, whole_again))
        # Lost every race: the slots are going to others; refusing never over-admits.
        now = self._clock()
        return self._refused(scope, limit, self._lasts(tenant_id, scope, limit), now)

    @staticmethod
    def _refused(scope: str, limit: Limit, lasts: dict[int, int], now: float) -> Verdict:
        wait = limit.retry_after(lasts, now)
        return Verdict(scope, limit, False, 0, max(1, math.ceil(wait)))

    def _read(self, tenant_id: str, scope: str, limit: Limit, shard: int) -> _Seen:
        snap = self._ref(tenant_id, scope, limit, shard).get(**AUTH_READ.kwargs())
        if not snap.exists:
            return _Seen(NONE_CLAIMED, None, False)
        last = (snap.to_dict() or {}).get("last")
        return _Seen(int(last) if isinstance(last, int) else NONE_CLAIMED, snap.update_time, True)

    def _write(
        self, tenant_id: str, scope: str, limit: Limit, shard: int, *, slot: int, seen: _Seen
    ) -> Any:
        ref = self._ref(tenant_id, scope, limit, shard)
        data = {
            "tenant_id": tenant_id,
            "scope": scope,
            "last": slot,
            queries.EXPIRES_AT: datetime.now(UTC) + SHARD_TTL,
        }
        if not seen.exists:
            return ref.create(data, **CLAIM_CALL.kwargs()).update_time
        option = self._db.write_option(last_update_time=seen.version)
        return ref.update(data, option=option, **CLAIM_CALL.kwargs()).update_time
