"""Concurrency limits: at most `max_running` of a tenant's tasks run at once, per key and in all.

Two kinds of limit share one mechanism, a slot group: a `concurrency_key` given
at submit (at most `max_running` tasks with that key), and the tenant's own
`max_running` set by operators (`aia tenants set-limits --max-running`), which
bounds the tenant's share of the workers and so makes capacity fair across
tenants. A group's limit is a set of slot documents,
`concurrency_slots/{tenant}:{key}:{i}` for i < limit (the tenant's group has
the key `*`, which no concurrency key can be). An attempt may start only by
taking a free slot of each of its groups **in the same commit** as its lease:
the lease write is conditioned on the task's version and each slot write on
the slot's (or on its absence), so two workers can never both take one slot,
and no task runs without one. A slot is free when nobody holds it or its
holder's lease has expired: a worker that died gives its slot back when its
lease would have ended, with no one to ask.

A task that finds every slot of a group taken is accepted and waits: it stays
`queued`, its view says `blocked_by: "concurrency:<key>"` (or
`"tenant:max_running"`), and its delivery is acknowledged. It never holds a
slot while it waits, so waiting cannot block anything (a rate limit is applied
at submit, before any of this). When an attempt ends, its worker frees its
slots and publishes again the first waiting tasks of each group, in line
order (`ready_at`, see `rank`: priority with aging). To close the race with a
release that happens while a task is parking, a task looks at the slots once
more after parking. Should a wake-up be lost (its worker died between the two
writes), the redispatch sweep republishes a queued task untouched for
`AIA_REDISPATCH_AFTER_S`.

Cost, for limited tasks only, per group: at most `PROBE` slot reads and one more
write in the lease's commit; at the end one more commit (the release) and a
query for waiting tasks. A group of more than `PROBE` slots is sampled: a task
that sees only held slots waits although another may be free, which costs it
a wake-up, never the limit (some of its holders are running, and each one's
release wakes the first waiters). A slot document takes two writes per task
that holds it, so slots suit tasks that run for seconds or more (a key whose
tasks finish in milliseconds would write one slot more than once a second).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from shared import queries
from shared.clients import WORKER_CALL
from shared.tasks.models import TaskMessage, TaskStatus

log = logging.getLogger("aia.flow.concurrency")

SLOTS = queries.CONCURRENCY_SLOTS
BLOCKED_PREFIX = "concurrency:"
# The tenant's own limit: a group key no concurrency key can be (its pattern has no `*`).
TENANT_GROUP = "*"
TENANT_BLOCKED = "tenant:max_running"
# Slots read to find a free one: a whole group up to this size, a random sample beyond.
PROBE = 8
# Priority (0-9, default 5) as a head start among waiting tasks: each step is a
# minute earlier in the line, so a low-priority task is overtaken only by tasks
# submitted within (difference x 1 min) of it: it ages into first place.
DEFAULT_PRIORITY = 5
PRIORITY_STEP = timedelta(minutes=1)
# Waiting tasks a release publishes again: one would do, but two cover a release
# whose wake-up raced another's (an extra one only parks again).
WAKE = 2
SLOT_RETENTION = timedelta(days=30)


def blocked_by(key: str) -> str:
    return TENANT_BLOCKED if key == TENANT_GROUP else BLOCKED_PREFIX + key


def rank(created_at: datetime, priority: int | None) -> datetime:
    """A waiting task's place in line (`ready_at`): earlier is woken first."""
    level = DEFAULT_PRIORITY if priority is None else priority
    return created_at - (level - DEFAULT_PRIORITY) * PRIORITY_STEP


@dataclass(frozen=True)
class SlotGroup:
    """One limit a task runs under: `limit` slots of `key` (TENANT_GROUP: the tenant's)."""

    key: str
    limit: int

    @property
    def reason(self) -> str:
        return blocked_by(self.key)


@dataclass(frozen=True)
class FreeSlot:
    """A slot seen free: where it is and the version the taking write is conditioned on."""

    doc_id: str
    version: Any  # None: the slot document does not exist yet


@dataclass(frozen=True)
class HeldSlot:
    """A slot an attempt holds: released by a write conditioned on `version`."""

    tenant_id: str
    key: str
    limit: int
    doc_id: str
    version: Any


def slot_id(tenant_id: str, key: str, index: int) -> str:
    return f"{quote(tenant_id, safe='')}:{quote(key, safe='')}:{index}"


class ConcurrencySlots:
    def __init__(
        self,
        db: Any,
        publisher: Callable[[], Any],
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._slots = db.collection(SLOTS)
        self._publisher = publisher  # built on first use
        self._clock = clock

    def document(self, doc_id: str) -> Any:
        return self._slots.document(doc_id)

    def get_all(self, refs: list[Any]) -> Any:
        return self._db.get_all(refs, **WORKER_CALL.kwargs())

    def free(self, tenant_id: str, key: str, limit: int, now: datetime) -> FreeSlot | None:
        """A free slot of the key, at random among those read; None if all read are held."""
        indexes = range(limit) if limit <= PROBE else random.sample(range(limit), PROBE)
        refs = [self._slots.document(slot_id(tenant_id, key, i)) for i in indexes]
        free: list[FreeSlot] = []
        for snap in self._db.get_all(refs, **WORKER_CALL.kwargs()):
            if not snap.exists:
                free.append(FreeSlot(snap.id, None))
                continue
            doc = snap.to_dict() or {}
            until = doc.get("until")
            if doc.get("holder") is None or until is None or until <= now:
                free.append(FreeSlot(snap.id, snap.update_time))
        # At random: workers racing for slots mostly pick different ones.
        return random.choice(free) if free else None  # noqa: S311 - spreads load, not a secret

    def take(
        self,
        batch: Any,
        slot: FreeSlot,
        *,
        tenant_id: str,
        key: str,
        task_id: str,
        lease_id: str,
        until: datetime,
        now: datetime,
    ) -> None:
        """Add the taking write to the lease's commit, conditioned as the slot was seen."""
        from google.cloud.firestore import Client

        ref = self._slots.document(slot.doc_id)
        data = {
            "tenant_id": tenant_id,
            "key": key,
            "holder": task_id,
            "lease_id": lease_id,
            "until": until,
            "updated_at": now,
            queries.EXPIRES_AT: until + SLOT_RETENTION,
        }
        if slot.version is None:
            batch.create(ref, data)
        else:
            batch.update(ref, data, option=Client.write_option(last_update_time=slot.version))

    def release(self, held: list[HeldSlot]) -> None:
        """Free each slot unless someone took it over (our lease expired); then wake waiters."""
        for slot in held:
            self._release(slot)
            self.wake(slot.tenant_id, slot.key)

    def _release(self, held: HeldSlot) -> None:
        from google.api_core.exceptions import FailedPrecondition, NotFound
        from google.cloud.firestore import Client

        if held.version is None:
            # The lease's answer was lost and the slot no longer names it: not ours to free.
            return
        try:
            self._slots.document(held.doc_id).update(
                {"holder": None, "lease_id": None, "until": None, "updated_at": self._clock()},
                option=Client.write_option(last_update_time=held.version),
                **WORKER_CALL.kwargs(),
            )
        except (FailedPrecondition, NotFound):
            log.info("slot taken over before its release", extra={"slot": held.doc_id})
        except Exception:
            log.warning("slot release failed", extra={"slot": held.doc_id}, exc_info=True)

    def wake(self, tenant_id: str, key: str, limit: int = WAKE) -> int:
        """Publish the group's first waiting tasks (by `ready_at`) again; how many were."""
        from google.cloud.firestore import FieldFilter

        spec = queries.TASKS_BLOCKED
        query = self._db.collection(spec.collection)
        values = {
            "tenant_id": tenant_id,
            "blocked_by": blocked_by(key),
            "status": TaskStatus.QUEUED.value,
        }
        for name in spec.equals:
            query = query.where(filter=FieldFilter(name, "==", values[name]))
        for name, direction in spec.order:
            query = query.order_by(name, direction=direction)
        woken = 0
        try:
            for snap in query.limit(limit).stream(**WORKER_CALL.kwargs()):
                message = TaskMessage(task_id=snap.id, tenant_id=tenant_id)
                with contextlib.suppress(Exception):  # the sweep republishes it
                    self._publisher().publish(
                        message,
                        attributes={"woken": "concurrency"},
                        traceparent=(snap.to_dict() or {}).get("traceparent"),
                    )
                    woken += 1
        except Exception:
            log.warning("waking waiting tasks failed", extra={"key": key}, exc_info=True)
        return woken

    def claim(
        self,
        tenant_id: str,
        groups: list[SlotGroup],
        *,
        task_id: str,
        until: datetime,
        now: datetime,
    ) -> SlotClaims | SlotGroup:
        """A free slot of every group, to take with the lease; or the first group with none."""
        found: list[tuple[SlotGroup, FreeSlot]] = []
        for group in groups:
            free = self.free(tenant_id, group.key, group.limit, now)
            if free is None:
                return group
            found.append((group, free))
        return SlotClaims(self, tuple(found), tenant_id, task_id, until, now)


@dataclass(frozen=True)
class SlotClaims:
    """`shared.tasks.repository.SlotClaim`: one free slot per group, taken together."""

    slots: ConcurrencySlots
    found: tuple[tuple[SlotGroup, FreeSlot], ...]
    tenant_id: str
    task_id: str
    until: datetime
    now: datetime

    def add(self, batch: Any, lease_id: str) -> None:
        for group, slot in self.found:
            self.slots.take(
                batch,
                slot,
                tenant_id=self.tenant_id,
                key=group.key,
                task_id=self.task_id,
                lease_id=lease_id,
                until=self.until,
                now=self.now,
            )

    def version_now(self, lease_id: str) -> tuple[Any, ...]:
        refs = [self.slots.document(slot.doc_id) for _, slot in self.found]
        versions = {}
        for snap in self.slots.get_all(refs):
            doc = snap.to_dict() if snap.exists else None
            versions[snap.id] = (
                snap.update_time if doc and doc.get("lease_id") == lease_id else None
            )
        return tuple(versions.get(slot.doc_id) for _, slot in self.found)

    def held(self, versions: tuple[Any, ...]) -> list[HeldSlot]:
        return [
            HeldSlot(self.tenant_id, group.key, group.limit, slot.doc_id, version)
            for (group, slot), version in zip(self.found, versions, strict=True)
        ]
