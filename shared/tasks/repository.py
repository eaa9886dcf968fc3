"""Task persistence on Firestore: create, read, list, and the worker's conditional writes.

No transaction on any path: each read-modify-write of a task is one read and
one write conditioned on the document's update time. That is one commit, takes
no lock (the emulator's and production's pessimistic transactions serialise
contending writers for seconds), carries its own deadline (a transaction's
begin and commit take none), and fails cleanly when another writer got there
first. Counter shards ride in the same batch and are never read on these paths.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from shared import queries
from shared.clients import (
    AUTH_READ,
    STATUS_READ,
    SUBMIT_WRITE,
    SWEEP_CALL,
    WORKER_CALL,
    Deadline,
)
from shared.errors import (
    AIAError,
    BadRequest,
    ConfigurationError,
    IdempotencyMismatch,
    IntegrityError,
    KeyUnavailable,
    NotFound,
    NotReplayable,
    StagedConflict,
    Unavailable,
)
from shared.limits import loads_bounded
from shared.operations import metrics
from shared.tasks.documents import PLAIN_ERRORS, TaskDocuments
from shared.tasks.events import NoEvents, TaskEvents
from shared.tasks.models import TASK_ID_PATTERN, Task, TaskError, TaskStatus

if TYPE_CHECKING:
    from shared.security.crypto import TaskKey

log = logging.getLogger("aia.repository")

IDEMPOTENCY_TTL = timedelta(hours=24)
_TASK_ID = re.compile(TASK_ID_PATTERN)
MAX_PAGE_TOKEN_CHARS = 512
# Conditional writes that keep losing to other writers give up (the delivery is retried).
_MAX_CONFLICTS = 5
T = TypeVar("T")


class Problem(StrEnum):
    """Why a stored task could not be opened for a delivery."""

    INTEGRITY = "integrity"  # tampered or swapped: fail at once
    KEY_UNAVAILABLE = "key-unavailable"  # wrapped under a key this ring lacks
    MALFORMED = "malformed"  # the document does not decode (a bug, or a schema drift)


@dataclass(frozen=True)
class Snapshot:
    """A task document as read, with the update time a conditional write names."""

    task_id: str
    doc: dict[str, Any]
    version: Any

    @property
    def status(self) -> str:
        return str(self.doc.get("status"))

    def get(self, name: str, default: Any = None) -> Any:
        return self.doc.get(name, default)


@dataclass(frozen=True)
class Opened:
    """What `load` found for one delivery: the snapshot, and the task if it could be opened."""

    snapshot: Snapshot | None  # None: no such task for that tenant
    task: Task | None = None
    key: TaskKey | None = None
    problem: Problem | None = None
    detail: str = ""


@dataclass(frozen=True)
class Lease:
    """A claimed attempt: only its holder's conditional writes can finish the task."""

    task: Task
    key: TaskKey
    lease_id: str
    version: Any
    stored_bytes: int  # sealed bytes already in the document, to bound the result


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
    dispatch_pending: bool = False  # a replay of a submit whose publish was deferred
    # When the commit storing the task landed: the update time of every document it wrote
    # (staged ones included), so their writers know their version without a read.
    commit_time: Any = None


@dataclass(frozen=True)
class RewrapPage:
    scanned: int
    rewrapped: int
    unreadable: list[tuple[str, str]]  # (task id, why)
    last_id: str | None


class Stuck(StrEnum):
    DISPATCH_PENDING = "dispatch-pending"
    STALE_QUEUED = "stale-queued"
    EXPIRED_LEASE = "expired-lease"
    DEAD_LETTER_PENDING = "dead-letter-pending"


@dataclass(frozen=True)
class StuckTask:
    task_id: str
    tenant_id: str
    reason: Stuck = Stuck.STALE_QUEUED
    version: Any = None


class Staged(Protocol):
    """Writes another feature adds to a task's commit (a budget hold), conditioned as it needs.

    If one of its preconditions fails (a version that moved on, a document it
    creates that exists) the commit stores nothing and the repository raises
    `StagedConflict`; the caller stages afresh.
    """

    def stage(self, batch: Any) -> None: ...


@dataclass(frozen=True)
class Rehold:
    """What a replay adds to the task it queues again: fields, and writes in the same commit."""

    fields: dict[str, Any]
    writes: tuple[Staged, ...]


# Given the task (plain fields) and its replay number: a fresh hold for its next run, or None.
ReholdFor = Callable[[Task, int], Rehold | None]


class TaskRepository(Protocol):
    events: TaskEvents  # what follows a terminal transition, staged in its commit

    def create(
        self, task: Task, idempotency: IdempotencyClaim | None, staged: Sequence[Staged] = ()
    ) -> Created: ...
    def replayed(self, claim: IdempotencyClaim, now: datetime) -> Created | None: ...
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
    def load(self, tenant_id: str, task_id: str) -> Opened: ...
    def take_lease(self, opened: Opened, now: datetime, lease_until: datetime) -> Lease | None: ...
    def finish(
        self,
        lease: Lease,
        *,
        status: TaskStatus,
        result: Any = None,
        error: TaskError | None = None,
        duration_s: float,
        until: float,
        charged: int | None = None,
    ) -> bool: ...
    def fail_unstarted(self, opened: Opened, error: TaskError, now: datetime) -> bool: ...
    def note_start_problem(self, opened: Opened, code: str, now: datetime) -> int | None: ...
    def dead_letter_sent(self, task_id: str) -> None: ...
    def mark_dispatch_pending(self, task_id: str) -> None: ...
    def replay(
        self, tenant_id: str, task_id: str, now: datetime, rehold: ReholdFor | None = None
    ) -> tuple[Task, bool]: ...
    def count_by_status(self, tenant_id: str) -> dict[str, int]: ...
    def stuck(
        self, now: datetime, queued_before: datetime, dead_letter_before: datetime, limit: int
    ) -> list[StuckTask]: ...
    def touch(self, tasks: list[StuckTask], now: datetime) -> int: ...


def encode_page_token(created_at: datetime, task_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": task_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def valid_task_id(task_id: object) -> bool:
    return isinstance(task_id, str) and _TASK_ID.match(task_id) is not None


def decode_page_token(token: str) -> tuple[datetime, str]:
    invalid = BadRequest("page_token is not a token this API issued", field="page_token")
    # Issued tokens are ~100 characters; a long one is never ours and is not parsed.
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid
    try:
        data = loads_bounded(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)), "page_token"
        )
        created = datetime.fromisoformat(data["c"])
        task_id = data["i"]
    except AIAError as exc:
        raise invalid from exc
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise invalid from exc
    if not valid_task_id(task_id) or created.tzinfo is None:
        raise invalid
    return created, task_id


def _google_errors() -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
    from google.api_core.exceptions import AlreadyExists, FailedPrecondition, NotFound

    return FailedPrecondition, NotFound, AlreadyExists


class FirestoreTaskRepository:
    def __init__(
        self,
        db: Any,
        documents: TaskDocuments | None,
        *,
        metric_shards: int,
        events: TaskEvents | None = None,
    ) -> None:
        self._db = db
        self._documents = documents
        self._shards = metric_shards
        self._tasks = db.collection(queries.TASKS)
        self.events: TaskEvents = events or NoEvents()

    @property
    def _docs(self) -> TaskDocuments:
        # The redispatcher moves ids only and is built without key material.
        if self._documents is None:
            raise ConfigurationError("this function has no key ring and cannot read task data")
        return self._documents

    def _after(self, version: Any) -> Any:
        return self._db.write_option(last_update_time=version)

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

    def _read(self, task_id: str, deadline: Deadline) -> Snapshot | None:
        snap = self._tasks.document(task_id).get(**deadline.kwargs())
        if not snap.exists:
            return None
        return Snapshot(task_id, snap.to_dict() or {}, snap.update_time)

    # -- submit ------------------------------------------------------------

    def create(
        self, task: Task, idempotency: IdempotencyClaim | None, staged: Sequence[Staged] = ()
    ) -> Created:
        doc = self._docs.encode_new(task)
        batch = self._rebatch(task, doc, staged)
        if idempotency is None:
            # Only a staged write can fail a precondition here: the task id is new.
            failed_precondition, _, already_exists = _google_errors()
            try:
                results = batch.commit(**SUBMIT_WRITE.kwargs())
            except (failed_precondition, already_exists) as exc:
                if not staged:
                    raise
                raise StagedConflict("a staged document changed under this submit") from exc
            return Created(task.task_id, replayed=False, commit_time=_commit_time(results))
        return self._create_idempotent(task, batch, doc, idempotency, staged)

    def _create_idempotent(
        self,
        task: Task,
        batch: Any,
        doc: dict[str, Any],
        claim: IdempotencyClaim,
        staged: Sequence[Staged] = (),
    ) -> Created:
        """Create the key's record with the task in one batch; an existing record is a replay.

        Concurrent submits with one key race on the record's `create`: exactly
        one wins, the others read its record and replay its task.
        """
        failed_precondition, _, already_exists = _google_errors()
        idem_ref = self._db.collection(queries.IDEMPOTENCY_KEYS).document(claim.doc_id)
        record = {
            "tenant_id": claim.tenant_id,
            "task_id": task.task_id,
            "body_digest": claim.body_digest,
            "created_at": task.created_at,
            queries.EXPIRES_AT: task.created_at + IDEMPOTENCY_TTL,
        }
        for attempt in range(_MAX_CONFLICTS):
            if attempt:
                batch = self._rebatch(task, doc, staged)
            batch.create(idem_ref, record)
            try:
                results = batch.commit(**SUBMIT_WRITE.kwargs())
                return Created(task.task_id, replayed=False, commit_time=_commit_time(results))
            except already_exists:
                pass
            except failed_precondition as exc:
                # Creates only, besides what was staged: a staged write lost its race.
                raise StagedConflict("a staged document changed under this submit") from exc
            snap = idem_ref.get(**SUBMIT_WRITE.kwargs())
            if not snap.exists:
                if staged:
                    # The key's record is not there: it was a staged create that lost.
                    raise StagedConflict("a staged document changed under this submit")
                continue  # expired and deleted in between: create it afresh
            prior = snap.to_dict() or {}
            if prior[queries.EXPIRES_AT] > task.created_at:
                if prior["body_digest"] != claim.body_digest:
                    raise IdempotencyMismatch(
                        "this Idempotency-Key was used with a different request body",
                        field="Idempotency-Key",
                    )
                return Created(
                    prior["task_id"], replayed=True, dispatch_pending=self._pending(prior)
                )
            # Past its window (TTL deletion lags by up to a day): the key starts afresh,
            # unless another submit renewed it first.
            renew = self._rebatch(task, doc, staged)
            renew.update(idem_ref, record, option=self._after(snap.update_time))
            try:
                results = renew.commit(**SUBMIT_WRITE.kwargs())
                return Created(task.task_id, replayed=False, commit_time=_commit_time(results))
            except failed_precondition as exc:
                if staged:
                    # Ours or the record's precondition: the caller stages afresh either way.
                    raise StagedConflict("a staged document changed under this submit") from exc
                continue
            except already_exists as exc:
                # Only a staged create can exist already here (the task id is new).
                raise StagedConflict("a staged document changed under this submit") from exc
        raise Unavailable("the Idempotency-Key is contended; retry shortly")

    def _rebatch(self, task: Task, doc: dict[str, Any], staged: Sequence[Staged] = ()) -> Any:
        batch = self._db.batch()
        batch.create(self._tasks.document(task.task_id), doc)
        metrics.record_submitted(batch, self._db, task.type, shards=self._shards)
        for writes in staged:
            writes.stage(batch)
        return batch

    def replayed(self, claim: IdempotencyClaim, now: datetime) -> Created | None:
        """The stored answer for `claim` if its key was used within its window, else None.

        For a submit refused before anything was written (over budget, over a
        rate): an earlier accepted submit with the same key still answers as
        itself, so a client retrying a lost answer never mistakes it for a refusal.
        """
        snap = (
            self._db.collection(queries.IDEMPOTENCY_KEYS)
            .document(claim.doc_id)
            .get(**SUBMIT_WRITE.kwargs())
        )
        prior = snap.to_dict() if snap.exists else None
        if not prior or prior[queries.EXPIRES_AT] <= now:
            return None
        if prior["body_digest"] != claim.body_digest:
            raise IdempotencyMismatch(
                "this Idempotency-Key was used with a different request body",
                field="Idempotency-Key",
            )
        return Created(prior["task_id"], replayed=True, dispatch_pending=self._pending(prior))

    def _pending(self, prior: dict[str, Any]) -> bool:
        snap = self._read(str(prior["task_id"]), SUBMIT_WRITE)
        return bool(snap is not None and snap.get("dispatch_pending"))

    def mark_dispatch_pending(self, task_id: str) -> None:
        self._tasks.document(task_id).update({"dispatch_pending": True}, **AUTH_READ.kwargs())

    def replay(
        self, tenant_id: str, task_id: str, now: datetime, rehold: ReholdFor | None = None
    ) -> tuple[Task, bool]:
        """Queue a task that failed for good again, for a fresh set of attempts.

        Returns the task and whether this call queued it. Idempotent: a task
        already queued or running again is returned as it is. The write is
        conditioned on the document as read, so two replays (or a replay racing
        the sweep) reset it once. `rehold` reserves the next run's budget in the
        same commit (its first run's hold was settled when it failed).
        """
        if not valid_task_id(task_id):
            raise NotFound(f"no task {task_id!r}")
        failed_precondition, _, already_exists = _google_errors()
        for _ in range(_MAX_CONFLICTS):
            snapshot = self._read(task_id, SUBMIT_WRITE)
            doc = snapshot.doc if snapshot is not None else None
            if (
                doc is None
                or doc.get("tenant_id") != tenant_id
                or TaskDocuments.expired(doc, _now())
            ):
                raise NotFound(f"no task {task_id!r}")
            assert snapshot is not None
            status = snapshot.status
            if status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
                return _plain_task(task_id, doc), False
            if status != TaskStatus.FAILED:
                raise NotReplayable(
                    f"task {task_id} is {status}; only failed tasks can be replayed"
                )
            if doc.get("error_code") == IntegrityError.code:
                raise NotReplayable(
                    f"task {task_id} failed its integrity check; its stored data cannot run"
                )
            changes: dict[str, Any] = {
                "status": TaskStatus.QUEUED.value,
                # Attempts keep counting (the handler sees attempt n+1); the budget restarts.
                "attempt_base": int(doc.get("attempts", 0)),
                "replays": int(doc.get("replays", 0)) + 1,
                "lease_id": None,
                "lease_until": None,
                "finished_at": None,
                "updated_at": now,
                "start_failures": 0,
                "key_wait_since": None,
                # Its dead letter (if still unsent) no longer describes the task.
                "dead_letter_pending": False,
                # The first run's hold was settled when it failed: the next is held afresh
                # (below) or not at all, never settled twice.
                "hold": None,
                "tokens_charged": None,
            }
            held = rehold(_plain_task(task_id, doc), changes["replays"]) if rehold else None
            batch = self._db.batch()
            if held is not None:
                changes.update(held.fields)
            batch.update(
                self._tasks.document(task_id), changes, option=self._after(snapshot.version)
            )
            for writes in held.writes if held is not None else ():
                writes.stage(batch)
            try:
                batch.commit(**SUBMIT_WRITE.kwargs())
            except failed_precondition:
                continue  # the task, or a budget shard, changed: read both again
            except already_exists:
                if held is None:
                    raise
                continue  # a document the hold creates was created first: hold afresh
            return _plain_task(task_id, {**doc, **changes}), True
        raise Unavailable("the task kept changing while it was replayed")

    def count_by_status(self, tenant_id: str) -> dict[str, int]:
        """The tenant's tasks per status (count aggregations; each reads index entries only)."""
        counts: dict[str, int] = {}
        for status in TaskStatus:
            query = self._query(
                queries.COUNT_TENANT_TASKS_BY_STATUS,
                {"tenant_id": tenant_id, "status": status.value},
            )
            result = query.count(alias="n").get(**STATUS_READ.kwargs())
            value = result[0][0].value if result and result[0] else 0
            counts[status.value] = int(value)
        return counts

    # -- reads -------------------------------------------------------------

    def get(self, tenant_id: str, task_id: str) -> Task:
        if not valid_task_id(task_id):
            raise NotFound(f"no task {task_id!r}")
        snap = self._read(task_id, STATUS_READ)
        doc = snap.doc if snap is not None else None
        # Another tenant's task is indistinguishable from a missing one.
        if doc is None or doc.get("tenant_id") != tenant_id or self._docs.expired(doc, _now()):
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
        snaps = list(query.limit(limit + 1).stream(**STATUS_READ.kwargs()))
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

    def load(self, tenant_id: str, task_id: str) -> Opened:
        snapshot = self._read(task_id, WORKER_CALL)
        if snapshot is None or snapshot.get("tenant_id") != tenant_id:
            return Opened(None)
        if TaskStatus(snapshot.status).terminal:
            return Opened(snapshot)
        try:
            key = self._docs.key_of(task_id, snapshot.doc)
            task = self._docs.decode(task_id, snapshot.doc, open_fields=("payload",))
        except IntegrityError as exc:
            return Opened(snapshot, problem=Problem.INTEGRITY, detail=exc.detail)
        except KeyUnavailable as exc:
            return Opened(snapshot, problem=Problem.KEY_UNAVAILABLE, detail=exc.detail)
        except Exception as exc:  # noqa: BLE001 - an undecodable document is a poison, not a crash
            return Opened(snapshot, problem=Problem.MALFORMED, detail=type(exc).__name__)
        return Opened(snapshot, task=task, key=key)

    def take_lease(self, opened: Opened, now: datetime, lease_until: datetime) -> Lease | None:
        """Claim the next attempt if the document is still as `opened` saw it; else None."""
        snapshot, task, key = opened.snapshot, opened.task, opened.key
        assert snapshot is not None
        assert task is not None
        assert key is not None
        lease_id = uuid.uuid4().hex
        changes = {
            "status": TaskStatus.RUNNING.value,
            "attempts": int(snapshot.get("attempts", 0)) + 1,
            "lease_id": lease_id,
            "lease_until": lease_until,
            "started_at": snapshot.get("started_at") or now,
            "updated_at": now,
            "dispatch_pending": False,
        }
        ref = self._tasks.document(task.task_id)
        failed_precondition, _, _ = _google_errors()
        try:
            result = ref.update(
                changes, option=self._after(snapshot.version), **WORKER_CALL.kwargs()
            )
            version = result.update_time
        except failed_precondition:
            # Lost to another writer, or our own write landed and its answer was lost.
            again = self._read(task.task_id, WORKER_CALL)
            if again is None or again.get("lease_id") != lease_id:
                return None
            version = again.version
        claimed = task.model_copy(update={**changes, "status": TaskStatus.RUNNING})
        return Lease(claimed, key, lease_id, version, self._docs.sealed_size(snapshot.doc))

    def finish(
        self,
        lease: Lease,
        *,
        status: TaskStatus,
        result: Any = None,
        error: TaskError | None = None,
        duration_s: float,
        until: float,
        charged: int | None = None,
    ) -> bool:
        """Record the attempt's outcome while `lease` still holds; False if it was lost.

        Transient failures are retried until `until` (epoch seconds), inside the
        lease: the handler's work is done and should not be thrown away.
        `charged` (tokens the attempt reported) adds to the task's total in the
        same write, so a terminal commit settles every attempt's use.
        """
        now = _now()
        changes: dict[str, Any] = {
            "status": status.value,
            "lease_id": None,
            "lease_until": None,
            "updated_at": now,
            "finished_by": lease.lease_id,
        }
        if status is TaskStatus.SUCCEEDED:
            changes.update(
                self._docs.seal_result(lease.key, result, stored_bytes=lease.stored_bytes)
            )
        if error is not None:
            changes.update(self._docs.seal_error(lease.key, error))
        terminal = status.terminal
        if terminal:
            changes["finished_at"] = now
        if status is TaskStatus.FAILED:
            changes["dead_letter_pending"] = True
        task = lease.task
        if charged is not None:
            total = (task.tokens_charged or 0) + charged
            # Absolute, not an increment: the write is conditioned on the version read.
            changes["tokens_charged"] = total
            task = task.model_copy(update={"tokens_charged": total})
        ref = self._tasks.document(lease.task.task_id)
        failed_precondition, _, _ = _google_errors()
        version = lease.version
        for _ in range(_MAX_CONFLICTS):
            batch = self._db.batch()
            batch.update(ref, changes, option=self._after(version))
            if terminal:
                self.events.stage(batch, task, status)
            metrics.record_duration(
                batch,
                self._db,
                lease.task.type,
                duration_s,
                shards=self._shards,
                outcome=status.value,
            )
            try:
                _until(functools.partial(batch.commit, **WORKER_CALL.kwargs()), until)
            except failed_precondition:
                again = self._read(lease.task.task_id, WORKER_CALL)
                if again is None:
                    return False
                if again.get("finished_by") == lease.lease_id:
                    return True  # our write landed; its answer was lost
                if again.get("lease_id") != lease.lease_id:
                    return False
                version = again.version  # someone else touched the document; we still hold it
            else:
                return True
        raise Unavailable("the task document kept changing while its attempt was recorded")

    def fail_unstarted(self, opened: Opened, error: TaskError, now: datetime) -> bool:
        """Fail a task no delivery can start (tamper, lost key, exhausted, poison); DLQ outbox."""
        snapshot = opened.snapshot
        assert snapshot is not None
        changes: dict[str, Any] = {
            "status": TaskStatus.FAILED.value,
            "finished_at": now,
            "updated_at": now,
            "lease_id": None,
            "lease_until": None,
            "dead_letter_pending": True,
        }
        if opened.key is not None:
            changes.update(self._docs.seal_error(opened.key, error))
        elif error.code in PLAIN_ERRORS:
            changes.update(self._docs.plain_error(error.code))
        else:
            changes.update({"error": None, "error_code": error.code})
        failed_precondition, _, _ = _google_errors()
        batch = self._db.batch()
        batch.update(
            self._tasks.document(snapshot.task_id), changes, option=self._after(snapshot.version)
        )
        metrics.record_outcome(
            batch, self._db, str(snapshot.get("type")), TaskStatus.FAILED.value, shards=self._shards
        )
        task = opened.task or TaskDocuments.plain(snapshot.task_id, snapshot.doc)
        self.events.stage(batch, task, TaskStatus.FAILED)
        try:
            batch.commit(**WORKER_CALL.kwargs())
        except failed_precondition:
            return False
        return True

    def note_start_problem(self, opened: Opened, code: str, now: datetime) -> int | None:
        """Count a delivery that could not start the task; None if the document moved on."""
        snapshot = opened.snapshot
        assert snapshot is not None
        count = int(snapshot.get("start_failures", 0)) + 1
        changes: dict[str, Any] = {"start_failures": count, "start_problem": code}
        if code == Problem.KEY_UNAVAILABLE and snapshot.get("key_wait_since") is None:
            changes["key_wait_since"] = now
        return count if self._conditional(snapshot, changes) else None

    def _conditional(self, snapshot: Snapshot, changes: dict[str, Any]) -> bool:
        failed_precondition, _, _ = _google_errors()
        ref = self._tasks.document(snapshot.task_id)
        try:
            ref.update(changes, option=self._after(snapshot.version), **WORKER_CALL.kwargs())
        except failed_precondition:
            return False
        return True

    def dead_letter_sent(self, task_id: str) -> None:
        _, not_found, _ = _google_errors()
        with contextlib.suppress(not_found):  # expired meanwhile: nothing left to flag
            # An update requires the document to exist; a missing one raises NotFound.
            self._tasks.document(task_id).update(
                {"dead_letter_pending": False}, **WORKER_CALL.kwargs()
            )

    # -- key rotation ------------------------------------------------------

    def rewrap_batch(self, start_after: str | None, limit: int) -> RewrapPage:
        """Re-wrap one page of data keys in task-id order; report what cannot be opened."""
        query = self._query(queries.KEYS_TO_REWRAP, {})
        if start_after:
            query = query.start_after({"__name__": self._tasks.document(start_after)})
        snaps = list(query.limit(limit).stream(**SWEEP_CALL.kwargs()))
        rewrapped = 0
        unreadable: list[tuple[str, str]] = []
        writes: list[tuple[Any, dict[str, Any], Any]] = []
        for snap in snaps:
            doc = snap.to_dict() or {}
            try:
                wrapped = self._docs.rewrap(snap.id, doc)
            except IntegrityError:
                # Already logged as a security event; one bad task must not stall rotation.
                unreadable.append((snap.id, "integrity"))
                continue
            except KeyUnavailable:
                unreadable.append((snap.id, "key-unavailable"))
                continue
            except Exception as exc:  # noqa: BLE001 - a malformed document is reported, not fatal
                unreadable.append((snap.id, f"malformed ({type(exc).__name__})"))
                continue
            if wrapped is not None:
                # Only the wrapped key changes: the data key, and so every sealed field, stays.
                writes.append((snap.reference, {"data_key": wrapped}, snap.update_time))
        rewrapped = self._write_each(writes)
        return RewrapPage(len(snaps), rewrapped, unreadable, snaps[-1].id if snaps else None)

    def _write_each(self, writes: Iterable[tuple[Any, dict[str, Any], Any]]) -> int:
        """Conditional updates, each on its own: a document gone or changed skips only itself.

        (One batch would fail whole when a single document was removed by TTL.)
        """
        failed_precondition, not_found, _ = _google_errors()

        def write(ref: Any, data: dict[str, Any], version: Any) -> bool:
            try:
                ref.update(data, option=self._after(version), **SWEEP_CALL.kwargs())
            except (failed_precondition, not_found):
                return False  # the document moved on; the next run sees it as it is now
            return True

        pending = list(writes)
        if not pending:
            return 0
        with ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
            futures = [pool.submit(write, *item) for item in pending]
        done = 0
        for future in futures:
            try:
                done += future.result()
            except Exception:  # counted as not done; the next sweep retries
                log.warning("conditional write failed", exc_info=True)
        return done

    # -- redispatch --------------------------------------------------------

    def stuck(
        self, now: datetime, queued_before: datetime, dead_letter_before: datetime, limit: int
    ) -> list[StuckTask]:
        queued = {"status": TaskStatus.QUEUED.value}
        candidates = [
            (
                Stuck.DISPATCH_PENDING,
                self._query(queries.DISPATCH_PENDING, {**queued, "dispatch_pending": True}),
            ),
            (Stuck.STALE_QUEUED, self._query(queries.STALE_QUEUED, queued, below=queued_before)),
            (
                Stuck.EXPIRED_LEASE,
                self._query(
                    queries.EXPIRED_LEASES, {"status": TaskStatus.RUNNING.value}, below=now
                ),
            ),
            (
                Stuck.DEAD_LETTER_PENDING,
                self._query(
                    queries.DEAD_LETTER_PENDING,
                    {"dead_letter_pending": True},
                    below=dead_letter_before,
                ),
            ),
        ]
        found: dict[str, StuckTask] = {}
        for reason, query in candidates:
            for snap in query.limit(limit).stream(**SWEEP_CALL.kwargs()):
                found.setdefault(
                    snap.id, StuckTask(snap.id, snap.get("tenant_id"), reason, snap.update_time)
                )
        return list(found.values())[:limit]

    def touch(self, tasks: list[StuckTask], now: datetime) -> int:
        """Record what the sweep republished, each only if unchanged since it was found.

        Queued tasks are stamped so the next sweep leaves them alone for a while;
        an expired lease is released (queued again, attempts kept), so its task is
        not republished again before a new lease could expire; a dead letter sent
        clears its outbox flag.
        """
        writes: list[tuple[Any, dict[str, Any], Any]] = []
        for task in tasks:
            ref = self._tasks.document(task.task_id)
            if task.reason is Stuck.DEAD_LETTER_PENDING:
                changes: dict[str, Any] = {"dead_letter_pending": False}
            elif task.reason is Stuck.EXPIRED_LEASE:
                changes = {
                    "status": TaskStatus.QUEUED.value,
                    "lease_id": None,
                    "lease_until": None,
                    "updated_at": now,
                    "dispatch_pending": False,
                }
            else:
                changes = {"updated_at": now, "dispatch_pending": False}
            writes.append((ref, changes, task.version))
        return self._write_each(writes)


def _until(call: Callable[[], T], until: float) -> T:
    """Retry `call` on transient failures until the epoch time `until`."""
    from google.api_core import exceptions

    delay = 0.2
    while True:
        try:
            return call()
        except (exceptions.ServiceUnavailable, exceptions.DeadlineExceeded, exceptions.RetryError):
            if time.time() + delay >= until:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _commit_time(results: Any) -> Any:
    return results[0].update_time if results else None


def _plain_task(task_id: str, doc: dict[str, Any]) -> Task:
    """A Task from plain fields only: what a function without the private ring may say."""
    return TaskDocuments.plain(task_id, doc)


def _view_fields(doc: dict[str, Any]) -> tuple[str, ...]:
    status = doc.get("status")
    if status == TaskStatus.SUCCEEDED.value:
        return ("result",)
    if status == TaskStatus.FAILED.value:
        return ("error",)
    return ()


def _now() -> datetime:
    return datetime.now(UTC)
