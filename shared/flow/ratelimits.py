"""Rate limits enforced across every instance: GCRA slots claimed in sharded Firestore documents.

`shared.flow.gcra` says which slots a request may claim; each shard document
holds the last slot it handed out. A submit plans its claim before anything
is written (which shard, which slot: refused here if none is free) and the
claim rides in the submit's own commit, conditioned on the shard as read (a
`create` for a shard never used). Two instances can never hand out one slot;
a task is never stored without its slot, nor a slot spent on a submit that
stored nothing (refused for its budget, say). A limit of r per second costs
about r/K writes per second per document, and no commit of its own.

Each instance remembers the last slot it saw per shard. Those are lower
bounds (a shard's last slot only grows), so when they already show every
candidate shard spent, the request is refused from memory, with no I/O: a
client hammering a limit costs Firestore nothing beyond the admitted rate.
Threads of one instance never plan on the same shard at once, so they do not
race each other for a slot.
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

CLAIM_CALL = Deadline(attempt_s=1.0, total_s=1.5)
MAX_PLAN_TRIES = 4
SHARD_TTL = timedelta(days=1)

Key = tuple[str, str, str, int]  # tenant, scope, limit key, shard


@dataclass
class _Seen:
    last: int = NONE_CLAIMED
    version: Any = None  # update time of the document when `last` was read
    exists: bool | None = None  # None: not known here (never read, or since written)


@dataclass(frozen=True)
class Verdict:
    """One limit's answer for one request."""

    scope: str
    limit: Limit
    admitted: bool
    remaining: int
    reset_s: int  # seconds until the window is whole again (admitted) or a slot frees (refused)


@dataclass(frozen=True)
class Claim:
    """A planned slot claim: a `Staged` write for the submit's commit."""

    db: Any
    ref: Any
    key: Key
    slot: int
    seen: _Seen
    verdict: Verdict

    def stage(self, batch: Any) -> None:
        tenant_id, scope, _, _ = self.key
        data = {
            "tenant_id": tenant_id,
            "scope": scope,
            "last": self.slot,
            queries.EXPIRES_AT: datetime.now(UTC) + SHARD_TTL,
        }
        if not self.seen.exists:
            batch.create(self.ref, data)
        else:
            batch.update(
                self.ref, data, option=self.db.write_option(last_update_time=self.seen.version)
            )


def _refusal(scope: str, limit: Limit, refused: Verdict, passed: list[Verdict]) -> RateLimited:
    what = "all submits" if scope == ALL_TYPES else f"type {scope}"
    return RateLimited(
        f"over the rate limit {limit.rate:g}/s (burst {limit.burst}) on {what}; "
        f"retry after {refused.reset_s} s",
        retry_after_s=max(1, refused.reset_s),
        headers=headers([*passed, refused]),
        policies=(policy_name(scope).strip('"'),),
    )


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
        self._seen: dict[Key, _Seen] = {}
        # Shards a thread of this instance has a claim planned on: the others leave them be.
        self._inflight: set[Key] = set()
        self._lock = threading.Lock()

    def _ref(self, key: Key) -> Any:
        tenant_id, scope, limit_key, shard = key
        name = ":".join((quote(tenant_id, safe=""), quote(scope, safe=""), limit_key, str(shard)))
        return self._db.collection(queries.RATE_SHARDS).document(name)

    def _lasts(self, tenant_id: str, scope: str, limit: Limit) -> dict[int, int]:
        with self._lock:
            return {
                key[3]: seen.last
                for key, seen in self._seen.items()
                if key[:3] == (tenant_id, scope, limit.key)
            }

    def _learn(self, key: Key, seen: _Seen) -> None:
        with self._lock:
            known = self._seen.get(key)
            # Lower bounds only grow: never forget a later slot for an earlier one, except
            # for a document removed by its TTL (its slots are long past).
            if known is None or seen.last >= known.last or seen.exists is False:
                self._seen[key] = seen

    def plan(self, tenant_id: str, limits: Sequence[tuple[str, Limit]]) -> list[Claim]:
        """A claim under each limit, to stage in the submit's commit; RateLimited if one refuses."""
        claims: list[Claim] = []
        for scope, limit in limits:
            try:
                claim = self._plan_one(tenant_id, scope, limit)
            except BaseException:
                self.done(claims, committed=False)
                raise
            if isinstance(claim, Verdict):
                self.done(claims, committed=False)
                raise _refusal(scope, limit, claim, [c.verdict for c in claims])
            claims.append(claim)
        return claims

    def done(
        self,
        claims: Sequence[Claim],
        *,
        committed: bool,
        raced: bool = False,
        commit_time: Any = None,
    ) -> None:
        """After the commit carrying `claims`: learn what it wrote, or that it lost a race.

        Knowing the commit's time, the next claim on the shard needs no read;
        without it (or if another instance writes meanwhile) it reads first.
        """
        with self._lock:
            for claim in claims:
                self._inflight.discard(claim.key)
        for claim in claims:
            if committed:
                exists = True if commit_time is not None else None
                self._learn(claim.key, _Seen(claim.slot, commit_time, exists))
            elif raced:
                with self._lock:
                    known = self._seen.get(claim.key)
                    if known is not None:
                        known.exists = None  # another instance wrote it: read afresh

    def claim(self, tenant_id: str, scope: str, limit: Limit) -> Verdict:
        """Plan and commit one claim on its own (operators' tools, tests): its verdict."""
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

        for _ in range(MAX_PLAN_TRIES):
            planned = self._plan_one(tenant_id, scope, limit)
            if isinstance(planned, Verdict):
                return planned
            batch = self._db.batch()
            planned.stage(batch)
            try:
                results = batch.commit(**CLAIM_CALL.kwargs())
            except (FailedPrecondition, AlreadyExists, NotFound):
                self.done([planned], committed=False, raced=True)
                continue
            self.done([planned], committed=True, commit_time=results[0].update_time)
            return planned.verdict
        return self._refused(scope, limit, self._lasts(tenant_id, scope, limit), self._clock())

    def _plan_one(self, tenant_id: str, scope: str, limit: Limit) -> Claim | Verdict:
        for _ in range(MAX_PLAN_TRIES):
            now = self._clock()
            lasts = self._lasts(tenant_id, scope, limit)
            open_shards = [
                shard
                for shard in limit.candidate_shards(now)
                if limit.claimable(shard, lasts.get(shard, NONE_CLAIMED), now) is not None
            ]
            key = self._take_inflight(tenant_id, scope, limit, open_shards)
            if key is None:
                # Nothing open that no thread here is claiming already: refused from memory.
                return self._refused(scope, limit, lasts, now)
            with self._lock:
                known = self._seen.get(key)
                seen = _Seen(known.last, known.version, known.exists) if known else _Seen()
            if seen.exists is None:
                seen = self._read(key)
                self._learn(key, seen)
            slot = limit.claimable(key[3], seen.last, now)
            if slot is None:
                with self._lock:
                    self._inflight.discard(key)
                continue
            lasts[key[3]] = slot
            remaining = limit.free_in_window(lasts, now)
            whole_again = max(0, math.ceil((limit.burst - remaining) / limit.rate))
            verdict = Verdict(scope, limit, True, remaining, whole_again)
            return Claim(self._db, self._ref(key), key, slot, seen, verdict)
        now = self._clock()
        return self._refused(scope, limit, self._lasts(tenant_id, scope, limit), now)

    def _take_inflight(
        self, tenant_id: str, scope: str, limit: Limit, shards: list[int]
    ) -> Key | None:
        with self._lock:
            free = [s for s in shards if (tenant_id, scope, limit.key, s) not in self._inflight]
            if not free:
                return None
            key = (tenant_id, scope, limit.key, self._rng.choice(free))
            self._inflight.add(key)
            return key

    @staticmethod
    def _refused(scope: str, limit: Limit, lasts: dict[int, int], now: float) -> Verdict:
        wait = limit.retry_after(lasts, now)
        return Verdict(scope, limit, False, 0, max(1, math.ceil(wait)))

    def _read(self, key: Key) -> _Seen:
        snap = self._ref(key).get(**AUTH_READ.kwargs())
        if not snap.exists:
            return _Seen(NONE_CLAIMED, None, False)
        last = (snap.to_dict() or {}).get("last")
        return _Seen(int(last) if isinstance(last, int) else NONE_CLAIMED, snap.update_time, True)
