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
at submit, before any of this). When an attempt ends, its worker hands each
of its slots to the first task waiting for that group, in line order
(`ready_at`, see `rank`: priority with aging), and publishes that task: the
slot is kept for it (`HANDOFF`), so a task arriving meanwhile waits its turn
instead of taking it, and every wake-up starts a task. With nobody waiting
the slot is freed; to close the race with a task parking at that moment, a
task looks at the slots once more after parking. Should a wake-up be lost,
the kept slot lapses after `HANDOFF` and the redispatch sweep republishes a
queued task untouched for `AIA_REDISPATCH_AFTER_S`.

Cost, for limited tasks only, per group: at most `PROBE` slot reads and one more
write in the lease's commit; at the end a query for the first waiting task and
one more commit (the hand-off: the slot and that task; or freeing the slot).
A group of more than `PROBE` slots is sampled: a task that sees only held
slots waits although another may be free, which costs it a wake-up, never the
limit (some of its holders are running, and each one's release hands its slot
on). A slot document takes two writes per task that holds it, so slots suit
tasks that run for seconds or more (a key whose tasks finish in milliseconds
would write one slot more than once a second).
"""

from __future__ import annotations

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
# How long a slot a release handed to a waiting task stays kept for it: its wake-up's
# delivery takes it well within this; a lost one makes the slot free again after it.
HANDOFF = timedelta(seconds=60)
# Waiting tasks a release looks at for one no other slot is being handed to.
LOOK_AHEAD = 10
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

    def free(
        self,
        tenant_id: str,
        key: str,
        limit: int,
        now: datetime,
        *,
        task_id: str | None = None,
        handed: str | None = None,
    ) -> FreeSlot | None:
        """A slot `task_id` may take: the one handed to it, else a free one at random.

        None if every slot read is held (or handed to another waiting task).
        """
        indexes = range(limit) if limit <= PROBE else random.sample(range(limit), PROBE)
        ids = [slot_id(tenant_id, key, i) for i in indexes]
        if handed is not None and handed not in ids and _in_group(handed, tenant_id, key, limit):
            ids.append(handed)
        free: list[FreeSlot] = []
        for snap in self._db.get_all(
            [self._slots.document(i) for i in ids], **WORKER_CALL.kwargs()
        ):
            if not snap.exists:
                free.append(FreeSlot(snap.id, None))
                continue
            doc = snap.to_dict() or {}
            until = doc.get("until")
            if doc.get("holder") is None or until is None or until <= now:
                free.append(FreeSlot(snap.id, snap.update_time))
            elif doc.get("handed") and doc.get("holder") == task_id:
                return FreeSlot(snap.id, snap.update_time)  # kept for this task by a release
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
            "handed": False,
            "updated_at": now,
            queries.EXPIRES_AT: until + SLOT_RETENTION,
        }
        if slot.version is None:
            batch.create(ref, data)
        else:
            batch.update(ref, data, option=Client.write_option(last_update_time=slot.version))

    def release(self, held: list[HeldSlot]) -> None:
        """Hand each slot to the first task waiting for its group, or free it.

        Not if someone took it over (our lease expired): then it is theirs.
        """
        for slot in held:
            if slot.version is None:
                # The lease's answer was lost and the slot no longer names it: not ours.
                continue
            self.hand_on(slot.tenant_id, slot.key, slot.doc_id, slot.version)

    def hand_on(self, tenant_id: str, key: str, doc_id: str, version: Any) -> str | None:
        """Give the slot (as of `version`) to the group's first waiting task; its id.

        One commit holds both writes: the slot names the task as its holder for
        `HANDOFF`, and the task records which slot is kept for it, so two
        releases never hand slots to one task and an arrival cannot take a slot
        meant for a task that waited. Then the task is published. With nobody
        waiting, the slot is freed.
        """
        from google.api_core.exceptions import FailedPrecondition, NotFound
        from google.cloud.firestore import Client

        ref = self._slots.document(doc_id)
        slot_option = Client.write_option(last_update_time=version)
        try:
            for _ in range(3):
                now = self._clock()
                waiter = self._first_waiting(tenant_id, key, now)
                if waiter is None:
                    free = {"holder": None, "lease_id": None, "until": None, "handed": False}
                    ref.update(
                        {**free, "updated_at": now}, option=slot_option, **WORKER_CALL.kwargs()
                    )
                    return None
                batch = self._db.batch()
                batch.update(
                    ref,
                    {
                        "holder": waiter.id,
                        "lease_id": None,
                        "until": now + HANDOFF,
                        "handed": True,
                        "updated_at": now,
                    },
                    option=slot_option,
                )
                batch.update(
                    waiter.reference,
                    {"handed_slot": doc_id, "updated_at": now},
                    option=Client.write_option(last_update_time=waiter.update_time),
                )
                try:
                    results = batch.commit(**WORKER_CALL.kwargs())
                except (FailedPrecondition, NotFound):
                    again = ref.get(**WORKER_CALL.kwargs())
                    if not again.exists or again.update_time != version:
                        raise  # the slot itself was taken over: not ours to give
                    continue  # the waiter moved on meanwhile: the next one
                version = results[0].update_time
                self._wake(waiter, tenant_id)
                return str(waiter.id)
        except (FailedPrecondition, NotFound):
            log.info("slot taken over before its release", extra={"slot": doc_id})
        except Exception:
            log.warning("slot release failed", extra={"slot": doc_id}, exc_info=True)
        return None

    def _first_waiting(self, tenant_id: str, key: str, now: datetime) -> Any:
        """The group's first waiting task no slot is being handed to; None if none."""
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
        for snap in query.limit(LOOK_AHEAD).stream(**WORKER_CALL.kwargs()):
            doc = snap.to_dict() or {}
            handed_at = doc.get("updated_at")
            # A hand-off not taken within HANDOFF lapsed: the task is in line again.
            if doc.get("handed_slot") and handed_at is not None and handed_at > now - HANDOFF:
                continue
            return snap
        return None

    def _wake(self, waiter: Any, tenant_id: str) -> None:
        message = TaskMessage(task_id=waiter.id, tenant_id=tenant_id)
        try:
            self._publisher().publish(
                message,
                attributes={"woken": "concurrency"},
                traceparent=(waiter.to_dict() or {}).get("traceparent"),
            )
        except Exception:  # noqa: BLE001 - its hand-off lapses; the sweep republishes it
            log.warning("waking a waiting task failed", extra={"task_id": waiter.id})

    def give_back(self, tenant_id: str, doc_id: str, task_id: str) -> None:
        """Pass on a slot handed to `task_id` that it cannot use (another limit is full)."""
        snap = self._slots.document(doc_id).get(**WORKER_CALL.kwargs())
        doc = snap.to_dict() if snap.exists else None
        if not doc or not doc.get("handed") or doc.get("holder") != task_id:
            return  # lapsed, or taken by another: nothing of ours to pass on
        self.hand_on(tenant_id, str(doc.get("key")), doc_id, snap.update_time)

    def claim(
        self,
        tenant_id: str,
        groups: list[SlotGroup],
        *,
        task_id: str,
        until: datetime,
        now: datetime,
        handed: str | None = None,
    ) -> SlotClaims | SlotGroup:
        """A free slot of every group, to take with the lease; or the first group with none."""
        found: list[tuple[SlotGroup, FreeSlot]] = []
        for group in groups:
            free = self.free(tenant_id, group.key, group.limit, now, task_id=task_id, handed=handed)
            if free is None:
                return group
            found.append((group, free))
        return SlotClaims(self, tuple(found), tenant_id, task_id, until, now)


def _in_group(doc_id: str, tenant_id: str, key: str, limit: int) -> bool:
    prefix = f"{quote(tenant_id, safe='')}:{quote(key, safe='')}:"
    index = doc_id.removeprefix(prefix)
    return doc_id.startswith(prefix) and index.isdigit() and int(index) < limit


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
