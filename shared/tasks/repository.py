"""Task persistence on Firestore: create, read, list, and the worker's lease transactions.

Every transaction touches one task document (plus write-only counter shards),
so the hot path never contends on a shared document.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from shared import queries
from shared.errors import (
    BadRequest,
    ConfigurationError,
    IdempotencyMismatch,
    IntegrityError,
    NotFound,
)
from shared.operations import metrics
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TASK_ID_PATTERN, Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from shared.security.crypto import TaskKey

IDEMPOTENCY_TTL = timedelta(hours=24)
_TASK_ID = re.compile(TASK_ID_PATTERN)
LEASE_GRACE = timedelta(seconds=30)


@dataclass(frozen=True)
class IdempotencyClaim:
    """A tenant's Idempotency-Key, as keyed digests of the key and of the request body.

    The key is digested with a secret (not a plain hash) so a database reader
    cannot test guesses of low-entropy keys such as "order-1234".
    """

    tenant_id: str
    doc_id: str
    body_digest: str


@dataclass(frozen=True)
class Created:
    task_id: str
    replayed: bool


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # this delivery owns the task now
    TERMINAL = "terminal"  # already succeeded or failed: acknowledge
    BUSY = "busy"  # another delivery holds a live lease: redeliver later
    EXHAUSTED = "exhausted"  # a lease expired on the last attempt: now failed
    MISSING = "missing"  # no such task for that tenant
    CORRUPT = "corrupt"  # stored data failed its integrity check: now failed


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    task: Task | None = None
    key: TaskKey | None = None
    lease_id: str | None = None
    stored_bytes: int = 0  # sealed bytes already in the document, to bound the result


@dataclass(frozen=True)
class RewrapPage:
    scanned: int
    rewrapped: int
    unreadable: list[str]
    last_id: str | None


@dataclass(frozen=True)
class StuckTask:
    task_id: str
    tenant_id: str


class TaskRepository(Protocol):
    def create(self, task: Task, idempotency: IdempotencyClaim | None) -> Created: ...
    def get(self, tenant_id: str, task_id: str) -> Task: ...
    def list_tasks(
        self,
        tenant_id: str,
        *,
        status: TaskStatus | None,
        task_type: str | None,
        limit: int,
        page_token: str | None,
    ) -> tuple[list[Task], str | None]: ...
    def claim(self, tenant_id: str, task_id: str, now: datetime) -> Claim: ...
    def succeed(self, claim: Claim, result: Any, duration_s: float) -> bool: ...
    def fail(self, claim: Claim, error: TaskError, duration_s: float, *, final: bool) -> bool: ...
    def mark_dispatch_pending(self, task_id: str) -> None: ...
    def stuck(self, now: datetime, queued_before: datetime, limit: int) -> list[StuckTask]: ...
    def touch(self, task_ids: list[str], now: datetime) -> None: ...


def encode_page_token(created_at: datetime, task_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": task_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def valid_task_id(task_id: object) -> bool:
    return isinstance(task_id, str) and _TASK_ID.match(task_id) is not None


def decode_page_token(token: str) -> tuple[datetime, str]:
    invalid = BadRequest("page_token is not a token this API issued", field="page_token")
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        created = datetime.fromisoformat(data["c"])
        task_id = data["i"]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise invalid from exc
    if not valid_task_id(task_id) or created.tzinfo is None:
        raise invalid
    return created, task_id


class FirestoreTaskRepository:
    def __init__(self, db: Any, documents: TaskDocuments | None, *, metric_shards: int) -> None:
        self._db = db
        self._documents = documents
        self._shards = metric_shards
        self._tasks = db.collection(queries.TASKS)

    @property
    def _docs(self) -> TaskDocuments:
        # The redispatcher moves ids only and is built without key material.
        if self._documents is None:
            raise ConfigurationError("this function has no key ring and cannot read task data")
        return self._documents

    def _query(self, spec: queries.QuerySpec, values: dict[str, Any], below: Any = None) -> Any:
        """A Firestore query built from a declared spec, so its index is known to exist."""
        from google.cloud.firestore import FieldFilter

        query = self._db.collection(spec.collection)
        for field in spec.equals:
            query = query.where(filter=FieldFilter(field, "==", values[field]))
        if spec.range_field is not None and below is not None:
            query = query.where(filter=FieldFilter(spec.range_field, "<", below))
        for field, direction in spec.order:
            query = query.order_by(field, direction=direction)
        return query

    # -- submit ------------------------------------------------------------

    def create(self, task: Task, idempotency: IdempotencyClaim | None) -> Created:
        doc = self._docs.encode_new(task)
        ref = self._tasks.document(task.task_id)
        if idempotency is None:
            batch = self._db.batch()
            batch.create(ref, doc)
            metrics.record_submitted(batch, self._db, task.type, shards=self._shards)
            batch.commit()
            return Created(task.task_id, replayed=False)
        return self._create_idempotent(task, doc, idempotency)

    def _create_idempotent(
        self, task: Task, doc: dict[str, Any], claim: IdempotencyClaim
    ) -> Created:
        from google.cloud import firestore

        idem_ref = self._db.collection(queries.IDEMPOTENCY_KEYS).document(claim.doc_id)
        task_ref = self._tasks.document(task.task_id)

        @firestore.transactional
        def run(transaction: Any) -> Created:
            snap = idem_ref.get(transaction=transaction)
            if snap.exists:
                prior = snap.to_dict()
                if prior[queries.EXPIRES_AT] > task.created_at:
                    if prior["body_digest"] != claim.body_digest:
                        raise IdempotencyMismatch(
                            "this Idempotency-Key was used with a different request body",
                            field="Idempotency-Key",
                        )
                    return Created(prior["task_id"], replayed=True)
            transaction.set(
                idem_ref,
                {
                    "tenant_id": claim.tenant_id,
                    "task_id": task.task_id,
                    "body_digest": claim.body_digest,
                    "created_at": task.created_at,
                    queries.EXPIRES_AT: task.created_at + IDEMPOTENCY_TTL,
                },
            )
            transaction.create(task_ref, doc)
            metrics.record_submitted(transaction, self._db, task.type, shards=self._shards)
            return Created(task.task_id, replayed=False)

        result: Created = run(self._db.transaction())
        return result

    def mark_dispatch_pending(self, task_id: str) -> None:
        self._tasks.document(task_id).update({"dispatch_pending": True})

    # -- reads -------------------------------------------------------------

    def get(self, tenant_id: str, task_id: str) -> Task:
        if not valid_task_id(task_id):
            raise NotFound(f"no task {task_id!r}")
        snap = self._tasks.document(task_id).get()
        doc = snap.to_dict() if snap.exists else None
        # Another tenant's task is indistinguishable from a missing one.
        if doc is None or doc["tenant_id"] != tenant_id or self._docs.expired(doc, _now()):
            raise NotFound(f"no task {task_id!r}")
        return self._docs.decode(task_id, doc, open_fields=_view_fields(doc))

    def list_tasks(
        self,
        tenant_id: str,
        *,
        status: TaskStatus | None,
        task_type: str | None,
        limit: int,
        page_token: str | None,
    ) -> tuple[list[Task], str | None]:
        spec = queries.list_tasks_spec(status=status is not None, type_=task_type is not None)
        values = {"tenant_id": tenant_id, "status": status and status.value, "type": task_type}
        query = self._query(spec, values)
        if page_token:
            created, last_id = decode_page_token(page_token)
            cursor = {"created_at": created, "__name__": self._tasks.document(last_id)}
            query = query.start_after(cursor)
        snaps = list(query.limit(limit + 1).stream())
        now = _now()
        tasks = [
            self._docs.decode(s.id, d, open_fields=_view_fields(d))
            for s in snaps[:limit]
            if not self._docs.expired(d := s.to_dict(), now)
        ]
        next_token = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            next_token = encode_page_token(last.get("created_at"), last.id)
        return tasks, next_token

    # -- worker ------------------------------------------------------------

    def claim(self, tenant_id: str, task_id: str, now: datetime) -> Claim:
        from google.cloud import firestore

        ref = self._tasks.document(task_id)

        @firestore.transactional
        def run(transaction: Any) -> Claim:
            snap = ref.get(transaction=transaction)
            doc = snap.to_dict() if snap.exists else None
            if doc is None or doc["tenant_id"] != tenant_id:
                return Claim(ClaimState.MISSING)
            status = TaskStatus(doc["status"])
            if status.terminal:
                return Claim(ClaimState.TERMINAL)
            if status is TaskStatus.RUNNING and doc["lease_until"] > now:
                return Claim(ClaimState.BUSY)
            try:
                key = self._docs.key_of(task_id, doc)
                task = self._docs.decode(task_id, doc, open_fields=("payload",))
            except IntegrityError:
                # Unreadable for good: fail it plainly rather than redeliver forever.
                transaction.update(
                    ref,
                    {
                        "status": TaskStatus.FAILED.value,
                        "finished_at": now,
                        "updated_at": now,
                        "error": None,
                        "error_code": IntegrityError.code,
                    },
                )
                return Claim(ClaimState.CORRUPT)
            if doc["attempts"] >= doc["max_attempts"]:
                # A worker died holding the last attempt: nothing may run again.
                error = TaskError(
                    code="lease-expired",
                    message=f"attempt {doc['attempts']} of {doc['max_attempts']} "
                    "stopped without finishing (worker lost)",
                )
                transaction.update(
                    ref,
                    {
                        "status": TaskStatus.FAILED.value,
                        "finished_at": now,
                        "updated_at": now,
                        "lease_id": None,
                        "lease_until": None,
                        **self._docs.seal_error(key, error),
                    },
                )
                return Claim(ClaimState.EXHAUSTED, task=task)
            lease_id = uuid.uuid4().hex
            changes = {
                "status": TaskStatus.RUNNING.value,
                "attempts": doc["attempts"] + 1,
                "lease_id": lease_id,
                "lease_until": now + timedelta(seconds=doc["timeout_s"]) + LEASE_GRACE,
                "started_at": doc.get("started_at") or now,
                "updated_at": now,
                "dispatch_pending": False,
            }
            transaction.update(ref, changes)
            claimed = task.model_copy(
                update={**changes, "status": TaskStatus.RUNNING, "dispatch_pending": False}
            )
            return Claim(
                ClaimState.CLAIMED,
                task=claimed,
                key=key,
                lease_id=lease_id,
                stored_bytes=self._docs.sealed_size(doc),
            )

        claim: Claim = run(self._db.transaction())
        return claim

    def succeed(self, claim: Claim, result: Any, duration_s: float) -> bool:
        assert claim.key is not None
        return self._finish(
            claim,
            {
                "status": TaskStatus.SUCCEEDED.value,
                **self._docs.seal_result(claim.key, result, stored_bytes=claim.stored_bytes),
            },
            duration_s,
            terminal=True,
        )

    def fail(self, claim: Claim, error: TaskError, duration_s: float, *, final: bool) -> bool:
        assert claim.key is not None
        status = TaskStatus.FAILED if final else TaskStatus.QUEUED
        return self._finish(
            claim,
            {"status": status.value, **self._docs.seal_error(claim.key, error)},
            duration_s,
            terminal=final,
        )

    def _finish(
        self, claim: Claim, changes: dict[str, Any], duration_s: float, *, terminal: bool
    ) -> bool:
        """Apply an attempt's outcome if this delivery still holds the lease."""
        from google.cloud import firestore

        assert claim.task is not None
        task = claim.task
        ref = self._tasks.document(task.task_id)

        @firestore.transactional
        def run(transaction: Any) -> bool:
            snap = ref.get(transaction=transaction)
            if not snap.exists or snap.get("lease_id") != claim.lease_id:
                return False
            now = _now()
            update = {**changes, "lease_id": None, "lease_until": None, "updated_at": now}
            if terminal:
                update["finished_at"] = now
            transaction.update(ref, update)
            metrics.record_duration(
                transaction, self._db, task.type, duration_s, shards=self._shards
            )
            return True

        owned: bool = run(self._db.transaction())
        return owned

    # -- key rotation ------------------------------------------------------

    def rewrap_batch(self, start_after: str | None, limit: int) -> RewrapPage:
        """Re-wrap one page of data keys in task-id order."""
        query = self._query(queries.KEYS_TO_REWRAP, {})
        if start_after:
            query = query.start_after({"__name__": self._tasks.document(start_after)})
        snaps = list(query.limit(limit).stream())
        batch = self._db.batch()
        from google.api_core.exceptions import NotFound as DocumentMissing

        rewrapped = 0
        unreadable: list[str] = []
        updates: list[tuple[Any, dict[str, Any]]] = []
        for snap in snaps:
            try:
                wrapped = self._docs.rewrap(snap.id, snap.to_dict())
            except IntegrityError:
                # Already logged as a security event; one bad task must not stall rotation.
                unreadable.append(snap.id)
                continue
            if wrapped is not None:
                # Only the wrapped key changes: the data key, and so every sealed field, stays.
                updates.append((snap.reference, {"data_key": wrapped}))
                batch.update(*updates[-1])
                rewrapped += 1
        if rewrapped:
            try:
                batch.commit()
            except DocumentMissing:
                # A task expired (TTL) between read and write: apply the rest one by one.
                for write in updates:
                    with contextlib.suppress(DocumentMissing):
                        write[0].update(write[1])
        return RewrapPage(len(snaps), rewrapped, unreadable, snaps[-1].id if snaps else None)

    # -- redispatch --------------------------------------------------------

    def stuck(self, now: datetime, queued_before: datetime, limit: int) -> list[StuckTask]:
        queued = {"status": TaskStatus.QUEUED.value}
        found: dict[str, StuckTask] = {}
        candidates = [
            self._query(queries.DISPATCH_PENDING, {**queued, "dispatch_pending": True}),
            self._query(queries.STALE_QUEUED, queued, below=queued_before),
            self._query(queries.EXPIRED_LEASES, {"status": TaskStatus.RUNNING.value}, below=now),
        ]
        for query in candidates:
            for snap in query.limit(limit).stream():
                found.setdefault(snap.id, StuckTask(snap.id, snap.get("tenant_id")))
        return list(found.values())[:limit]

    def touch(self, task_ids: list[str], now: datetime) -> None:
        """Record a re-publish so the next sweep leaves these tasks alone for a while."""
        batch = self._db.batch()
        for task_id in task_ids:
            batch.update(
                self._tasks.document(task_id), {"updated_at": now, "dispatch_pending": False}
            )
        batch.commit()


def _view_fields(doc: dict[str, Any]) -> tuple[str, ...]:
    status = doc["status"]
    if status == TaskStatus.SUCCEEDED.value:
        return ("result",)
    if status == TaskStatus.FAILED.value:
        return ("error",)
    return ()


def _now() -> datetime:
    return datetime.now(UTC)
