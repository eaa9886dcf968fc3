"""Cron schedules: the stored document, its view, and its storage on Firestore.

A schedule's task payload is client data and is sealed like a task's
(`shared.security.crypto`), under a data key bound to the tenant, the
schedule id and the task's control fields; only the ticker, which holds the
private ring, opens it to submit a slot's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from shared import queries
from shared.clients import STATUS_READ, SUBMIT_WRITE, TICK_CALL, Deadline
from shared.errors import ConfigurationError, NotFound, PayloadTooLarge
from shared.scheduling.cron import CronSchedule, zone
from shared.scheduling.policy import Due, Overlap
from shared.scheduling.timers import conditional_errors, due_query
from shared.tasks.documents import MAX_SEALED_BYTES, control_of
from shared.tasks.models import TERMINAL
from shared.tasks.repository import decode_page_token, encode_page_token, valid_task_id

if TYPE_CHECKING:
    from shared.security.crypto import TaskOpener, TaskSealer
    from shared.tasks.models import TaskRequest


class ScheduleState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule document as read, with the update time a conditional write names."""

    schedule_id: str
    doc: dict[str, Any]
    version: Any

    @property
    def tenant_id(self) -> str:
        return str(self.doc["tenant_id"])

    @property
    def state(self) -> ScheduleState:
        return ScheduleState(self.doc["state"])

    @property
    def cron(self) -> CronSchedule:
        return CronSchedule(self.doc["cron"], zone(self.doc["timezone"]))

    @property
    def last_task_id(self) -> str | None:
        value = self.doc.get("last_task_id")
        return None if value is None else str(value)

    def due(self) -> Due:
        return Due(
            next_run_at=self.doc["next_run_at"],
            buffered_slot=self.doc.get("buffered_slot"),
            overlap=Overlap(self.doc["overlap"]),
            catchup_window=timedelta(seconds=int(self.doc["catchup_window_s"])),
        )

    def view(self, *, upcoming: int = 5) -> dict[str, Any]:
        """What a client reads: never the payload, which stays sealed."""
        doc = self.doc
        active = self.state is ScheduleState.ACTIVE and doc.get("next_run_at") is not None
        cron = self.cron
        next_runs = cron.upcoming(doc["next_run_at"], upcoming) if active else []
        body: dict[str, Any] = {
            "schedule_id": self.schedule_id,
            "cron": doc["cron"],
            "timezone": doc["timezone"],
            "overlap": doc["overlap"],
            "catchup_window_s": doc["catchup_window_s"],
            "state": doc["state"],
            "task": {
                "type": doc["type"],
                "max_attempts": doc["max_attempts"],
                "timeout_s": doc["timeout_s"],
            },
            # In the schedule's own zone, so a daylight-saving shift reads as one.
            "next_runs": [run.astimezone(cron.zone).isoformat() for run in next_runs],
            "created_at": doc["created_at"].isoformat(),
            "updated_at": doc["updated_at"].isoformat(),
            "fired": int(doc.get("fired", 0)),
            "skipped": int(doc.get("skipped", 0)),
            "missed": int(doc.get("missed", 0)),
        }
        if doc.get("last_slot") is not None:
            body["last_run"] = {
                "slot": doc["last_slot"].astimezone(cron.zone).isoformat(),
                "task_id": doc.get("last_task_id"),
            }
        if doc.get("buffered_slot") is not None:
            body["buffered_run"] = doc["buffered_slot"].astimezone(cron.zone).isoformat()
        if doc.get("last_error"):
            body["last_error"] = doc["last_error"]
        return body


def binding_id(schedule_id: str) -> str:
    # Never a task id (32 hex characters): a schedule's sealed payload opens for it alone.
    return f"schedule/{schedule_id}"


class ScheduleDocuments:
    """Seals a schedule's task payload (public ring) and opens it (private ring)."""

    def __init__(self, sealer: TaskSealer, opener: TaskOpener | None) -> None:
        self._sealer = sealer
        self._opener = opener

    def seal(self, tenant_id: str, schedule_id: str, task: TaskRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "type": task.type,
            "max_attempts": task.max_attempts,
            "timeout_s": task.timeout_s,
        }
        key = self._sealer.new_task_key(tenant_id, binding_id(schedule_id), control_of(fields))
        sealed = key.seal("payload", task.payload)
        if len(sealed) + len(key.wrapped) > MAX_SEALED_BYTES:
            raise PayloadTooLarge(
                f"task.payload is {len(sealed)} bytes once stored; "
                f"the limit is {MAX_SEALED_BYTES - len(key.wrapped)}",
                field="task.payload",
            )
        return {**fields, "data_key": key.wrapped, "payload": sealed}

    def payload(self, stored: StoredSchedule) -> dict[str, Any]:
        """The task payload; IntegrityError if the document was tampered with."""
        if self._opener is None:
            raise ConfigurationError("this function holds no private keys and cannot open payloads")
        doc = stored.doc
        key = self._opener.open_task_key(
            stored.tenant_id,
            binding_id(stored.schedule_id),
            bytes(doc["data_key"]),
            control_of(doc),
        )
        payload: dict[str, Any] = key.open("payload", bytes(doc["payload"]))
        return payload


class FirestoreScheduleRepository:
    def __init__(self, db: Any) -> None:
        self._db = db
        self._schedules = db.collection(queries.SCHEDULES)
        self._tasks = db.collection(queries.TASKS)

    def create(self, schedule_id: str, doc: dict[str, Any]) -> StoredSchedule:
        result = self._schedules.document(schedule_id).create(doc, **SUBMIT_WRITE.kwargs())
        return StoredSchedule(schedule_id, doc, result.update_time)

    def get(self, tenant_id: str, schedule_id: str) -> StoredSchedule:
        missing = NotFound(f"no schedule {schedule_id!r}")
        if not valid_task_id(schedule_id):
            raise missing
        snap = self._schedules.document(schedule_id).get(**STATUS_READ.kwargs())
        # Another tenant's schedule is indistinguishable from a missing one.
        if not snap.exists or (snap.to_dict() or {}).get("tenant_id") != tenant_id:
            raise missing
        return StoredSchedule(schedule_id, snap.to_dict() or {}, snap.update_time)

    def page(
        self, tenant_id: str, *, limit: int, page_token: str | None
    ) -> tuple[list[StoredSchedule], str | None]:
        from google.cloud.firestore import FieldFilter

        spec = queries.LIST_SCHEDULES
        query = self._schedules.where(filter=FieldFilter("tenant_id", "==", tenant_id))
        for name, direction in spec.order:
            query = query.order_by(name, direction=direction)
        if page_token:
            created, last_id = decode_page_token(page_token)
            query = query.start_after(
                {"created_at": created, "__name__": self._schedules.document(last_id)}
            )
        snaps = list(query.limit(limit + 1).stream(**STATUS_READ.kwargs()))
        found = [StoredSchedule(s.id, s.to_dict() or {}, s.update_time) for s in snaps[:limit]]
        token = None
        if len(snaps) > limit:
            last = found[-1]
            token = encode_page_token(last.doc["created_at"], last.schedule_id)
        return found, token

    def update(
        self, stored: StoredSchedule, changes: dict[str, Any], deadline: Deadline = SUBMIT_WRITE
    ) -> bool:
        """Apply `changes` if the schedule is still as read; False if it moved on or went."""
        try:
            self._schedules.document(stored.schedule_id).update(
                changes,
                option=self._db.write_option(last_update_time=stored.version),
                **deadline.kwargs(),
            )
        except conditional_errors():
            return False
        return True

    def delete(self, stored: StoredSchedule) -> None:
        self._schedules.document(stored.schedule_id).delete(**SUBMIT_WRITE.kwargs())

    # -- the ticker ------------------------------------------------------------

    def due(self, now: datetime, limit: int) -> list[StoredSchedule]:
        query = due_query(
            self._db, queries.DUE_SCHEDULES, {"state": ScheduleState.ACTIVE.value}, now
        ).limit(limit)
        return [
            StoredSchedule(s.id, s.to_dict() or {}, s.update_time)
            for s in query.stream(**TICK_CALL.kwargs())
        ]

    def finished(self, task_id: str) -> bool:
        """Whether a schedule's previous run is over (a task gone by retention is over too)."""
        snap = self._tasks.document(task_id).get(field_paths=["status"], **TICK_CALL.kwargs())
        return not snap.exists or snap.get("status") in TERMINAL
