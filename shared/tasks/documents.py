"""Task <-> Firestore document mapping; client data fields are sealed, never stored plain.

Plaintext stays only where queries need it (tenant, type, status, timestamps,
attempts); payload, result and error travel through the task's data key.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import tracing
from shared.errors import ConfigurationError, PayloadTooLarge, ResultTooLarge
from shared.queries import EXPIRES_AT, INDEX_SHARD, index_shard
from shared.tasks.models import Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from shared.security.crypto import Control, TaskKey, TaskOpener, TaskSealer

DATA_FIELDS = ("payload", "result", "error", "progress", "webhook_url")
# Firestore refuses documents over 1 MiB; the rest is room for names and plain fields.
MAX_SEALED_BYTES = 1024 * 1024 - 16 * 1024
_PLAIN_FIELDS = (
    "tenant_id",
    "type",
    "status",
    "attempts",
    "max_attempts",
    "timeout_s",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "lease_id",
    "lease_until",
    "dispatch_pending",
    "dead_letter_pending",
    "attempt_base",
    "run_at",
    "cancel_requested",
    "has_dependents",
    "parent_id",
    "child_index",
    "continues",
    "join",
    "continuation_id",
    "blocked_by",
    "inputs_from",
    "result_from",
    "depends_on",
    "workflow_id",
    "node",
    "notify",
    "hold",
    "tokens_charged",
    "traceparent",
    "concurrency_key",
    "max_running",
    "priority",
    "handed_slot",
)

_OPTIONAL_FIELDS = (
    "parent_id",
    "child_index",
    "continues",
    "join",
    "continuation_id",
    "blocked_by",
    "inputs_from",
    "result_from",
    "depends_on",
    "workflow_id",
    "node",
    "traceparent",
    "concurrency_key",
    "max_running",
    "priority",
    "handed_slot",
)

# Errors recorded when a task could not be opened at all: no key can seal a
# message for them, so only the code is stored and the view explains it.
PLAIN_ERRORS = {
    "integrity": "stored task data failed its integrity check",
    "key-unavailable": "the key that wraps this task's data is not in the key ring",
    "undeliverable": "the stored task could not be read or started by any delivery",
    "child-failed": "a child of this fan-out failed or was cancelled (join: all)",
    "no-child-succeeded": "no child of this fan-out succeeded (join: any)",
    "continuation-failed": "the continuation of this fan-out failed; its own error says why",
    "dependency-failed": "a task this one depends on failed or was cancelled",
}


class TaskDocuments:
    """Encodes tasks for storage and decodes them, opening only the fields asked for."""

    def __init__(
        self, sealer: TaskSealer, opener: TaskOpener | None, *, retention: timedelta
    ) -> None:
        self._sealer = sealer
        self._opener = opener
        self._retention = retention

    def encode_new(self, task: Task) -> dict[str, Any]:
        key = self._sealer.new_task_key(task.tenant_id, task.task_id, control_of(task))
        doc: dict[str, Any] = {name: getattr(task, name) for name in _PLAIN_FIELDS}
        # The trace the task was made in (a submit's request, a parent's attempt): what
        # publishes, runs or reports on it later continues that trace.
        doc["traceparent"] = task.traceparent or tracing.current_traceparent()
        # Fields only some tasks use stay out of the others' documents (and indexes).
        for name in _OPTIONAL_FIELDS:
            if doc[name] is None:
                del doc[name]
        doc["status"] = task.status.value
        # Leads the timer and sweep indexes, so their rising times spread over many ranges.
        doc[INDEX_SHARD] = index_shard(task.task_id)
        if task.run_at is None:
            del doc["run_at"]  # absent, not null: an immediate task stays out of the timer index
        doc["hold"] = task.hold.model_dump() if task.hold is not None else None
        doc["data_key"] = key.wrapped
        doc["payload"] = key.seal("payload", task.payload)
        if task.webhook_url is not None:
            doc["webhook_url"] = key.seal("webhook_url", task.webhook_url)
        doc["notify"] = task.webhook_url is not None
        if self.sealed_size(doc) > MAX_SEALED_BYTES:
            raise PayloadTooLarge(
                f"payload is {len(doc['payload'])} bytes once stored; "
                f"the limit is {MAX_SEALED_BYTES - len(key.wrapped)}",
                field="payload",
            )
        doc["result"] = None
        doc["error"] = None
        doc["error_code"] = None
        doc[EXPIRES_AT] = task.created_at + self._retention
        return doc

    @property
    def _private(self) -> TaskOpener:
        if self._opener is None:
            raise ConfigurationError(
                "this function holds no private keys and cannot read task data"
            )
        return self._opener

    def key_of(self, task_id: str, doc: dict[str, Any]) -> TaskKey:
        """The task's data key, bound to the control fields the document holds now.

        A database writer who changes `type`, `max_attempts` or `timeout_s`
        makes every sealed field fail its integrity check.
        """
        return self._private.open_task_key(
            doc["tenant_id"], task_id, bytes(doc["data_key"]), control_of(doc)
        )

    def rewrap(self, task_id: str, doc: dict[str, Any]) -> bytes | None:
        """The data key re-wrapped under the current key, or None if it already is."""
        return self._private.rewrap(doc["tenant_id"], task_id, bytes(doc["data_key"]))

    def decode(
        self,
        task_id: str,
        doc: dict[str, Any],
        *,
        open_fields: Collection[str] = (),
        key: TaskKey | None = None,
    ) -> Task:
        """A Task from its document; data fields not in `open_fields` stay unread.

        `key` is the document's data key if the caller opened it already (`key_of`):
        each opening is a post-quantum decapsulation.
        """
        values: dict[str, Any] = {name: doc.get(name) for name in _PLAIN_FIELDS}
        values["task_id"] = task_id
        values["status"] = TaskStatus(doc["status"])
        wanted = [f for f in open_fields if doc.get(f) is not None]
        if wanted:
            key = key or self.key_of(task_id, doc)
            for name in wanted:
                values[name] = key.open(name, bytes(doc[name]))
        if isinstance(values.get("error"), dict):
            values["error"] = TaskError.model_validate(values["error"])
        elif doc.get("error_code") in PLAIN_ERRORS and values.get("error") is None:
            code = doc["error_code"]
            values["error"] = TaskError(code=code, message=PLAIN_ERRORS[code])
        values["dispatch_pending"] = bool(values.get("dispatch_pending"))
        values["dead_letter_pending"] = bool(values.get("dead_letter_pending"))
        values["attempt_base"] = int(values.get("attempt_base") or 0)
        values["cancel_requested"] = bool(values.get("cancel_requested"))
        values["has_dependents"] = bool(values.get("has_dependents"))
        values["notify"] = bool(values.get("notify"))
        return Task.model_validate(values)

    @staticmethod
    def plain(task_id: str, doc: dict[str, Any]) -> Task:
        """A Task from the document's plain fields alone (no key needed, no data opened)."""
        values: dict[str, Any] = {name: doc.get(name) for name in _PLAIN_FIELDS}
        values["task_id"] = task_id
        values["status"] = TaskStatus(doc["status"])
        values["dispatch_pending"] = bool(values.get("dispatch_pending"))
        values["dead_letter_pending"] = bool(values.get("dead_letter_pending"))
        values["attempt_base"] = int(values.get("attempt_base") or 0)
        values["cancel_requested"] = bool(values.get("cancel_requested"))
        values["has_dependents"] = bool(values.get("has_dependents"))
        values["notify"] = bool(values.get("notify"))
        return Task.model_validate(values)

    @staticmethod
    def seal_error(key: TaskKey, error: TaskError) -> dict[str, Any]:
        """Update fields recording `error`: the message sealed, the code plain for operators."""
        return {"error": key.seal("error", error.model_dump()), "error_code": error.code}

    @staticmethod
    def sealed_size(doc: dict[str, Any]) -> int:
        return sum(len(doc.get(name) or b"") for name in ("data_key", *DATA_FIELDS))

    @staticmethod
    def seal_result(key: TaskKey, result: Any, *, stored_bytes: int) -> dict[str, Any]:
        """The result sealed; ResultTooLarge if the task document could not hold it."""
        sealed = key.seal("result", result)
        if stored_bytes + len(sealed) > MAX_SEALED_BYTES:
            raise ResultTooLarge(
                f"result is {len(sealed)} bytes once stored; "
                f"{MAX_SEALED_BYTES - stored_bytes} bytes are left beside the payload"
            )
        return {"result": sealed}

    @staticmethod
    def plain_error(code: str) -> dict[str, Any]:
        """Update fields recording an error no key can seal (see `PLAIN_ERRORS`)."""
        assert code in PLAIN_ERRORS
        return {"error": None, "error_code": code}

    @staticmethod
    def expired(doc: dict[str, Any], now: datetime) -> bool:
        expires = doc.get(EXPIRES_AT)
        return expires is not None and expires <= now


def control_of(source: Task | dict[str, Any]) -> Control:
    """The control fields bound into a task's sealed data, from a task or its document."""
    from shared.security.crypto import CONTROL_FIELDS

    get = source.get if isinstance(source, dict) else lambda name: getattr(source, name)
    return tuple((name, str(get(name))) for name in CONTROL_FIELDS)
