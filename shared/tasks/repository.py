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
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
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
    Conflict,
    IdempotencyMismatch,
    IntegrityError,
    KeyUnavailable,
    NotFound,
    NotReplayable,
    StagedConflict,
    Unavailable,
)
from shared.limits import loads_bounded
from shared.operations.counters import TaskCounters
from shared.tasks.documents import PLAIN_ERRORS, TaskDocuments
from shared.tasks.events import NoEvents, TaskEvents
from shared.tasks.later import LATER, Later
from shared.tasks.models import (
    TASK_ID_PATTERN,
    CreatedTask,
    Task,
    TaskError,
    TaskMessage,
    TaskStatus,
)

if TYPE_CHECKING:
    from shared.security.crypto import TaskKey

log = logging.getLogger("aia.repository")

IDEMPOTENCY_TTL = timedelta(hours=24)
_TASK_ID = re.compile(TASK_ID_PATTERN)
MAX_PAGE_TOKEN_CHARS = 512
# Conditional writes that keep losing to other writers give up (the delivery is retried).
_MAX_CONFLICTS = 5
# Writes per batch when many tasks are created at once (a fan-out).
_CREATE_BATCH = 400
T = TypeVar("T")
CANCELLED_MESSAGE = "the task was cancelled"


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


@dataclass
class Lease:
    """A claimed attempt: only its holder's conditional writes can change the task.

    `version` follows the holder's own writes (progress, then the outcome), so
    each is conditioned on the document as the holder last left it.
    """

    task: Task
    key: TaskKey
    lease_id: str
    version: Any
    stored_bytes: int  # sealed bytes already in the document, to bound the result
    lock: threading.Lock = dataclass_field(default_factory=threading.Lock, repr=False)
    # The versions of the concurrency slots taken with the lease (shared.flow.concurrency).
    slot_version: tuple[Any, ...] = ()


@dataclass
class _Ride:
    """Whether a batch that carried the counters due landed."""

    landed: bool = False


class SlotClaim(Protocol):
    """Concurrency slots to take in the lease's own commit (its writes after the lease's)."""

    def add(self, batch: Any, lease_id: str) -> None: ...

    def version_now(self, lease_id: str) -> tuple[Any, ...]:
        """Each slot's version if this lease holds it (after a commit whose answer was lost)."""


class SlotTaken(Exception):
    """The slot a lease would take was taken meanwhile: choose again."""


class CancelWatch:
    """Whether a cancellation was requested for a running task, learnt from a listener."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._watch: Any = None
        self._stopped = False
        self._lock = threading.Lock()

    def requested(self) -> bool:
        return self._requested.is_set()

    def set(self) -> None:
        self._requested.set()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):  # a listener torn down twice is harmless
                watch.unsubscribe()


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
    run_at: datetime | None = None  # a replay of a submit that scheduled its task
    fresh: CreatedTask | None = None  # the document as created (not for a replay)


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
    traceparent: str | None = None  # the trace the task was submitted in


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
        self,
        task: Task,
        idempotency: IdempotencyClaim | None,
        staged: Sequence[Staged] = (),
        *,
        extra: Callable[[Any], None] | None = None,
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
    def opened_from_message(self, message: TaskMessage) -> Opened | None: ...
    def children_of(self, tenant_id: str, parent_id: str, *, open_fields: bool) -> list[Task]: ...
    def children_by_status(self, tenant_id: str, parent_id: str) -> dict[str, int]: ...
    def take_lease(
        self,
        opened: Opened,
        now: datetime,
        lease_until: datetime,
        slot: SlotClaim | None = None,
    ) -> Lease | None: ...
    def park(self, opened: Opened, reason: str, now: datetime, ready_at: datetime) -> bool: ...
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
    ) -> TaskStatus | None: ...
    def record_progress(self, lease: Lease, progress: dict[str, Any]) -> bool: ...
    def watch_cancel(self, task_id: str, *, after_s: float = 0.5) -> CancelWatch: ...
    def cancel(self, tenant_id: str, task_id: str, now: datetime) -> Task: ...
    def fail_unstarted(
        self, opened: Opened, error: TaskError, now: datetime, *, status: TaskStatus = ...
    ) -> bool: ...
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
        counters: TaskCounters | None = None,
        later: Later = LATER,
    ) -> None:
        self._db = db
        self._later = later
        self._documents = documents
        self._shards = metric_shards
        self._tasks = db.collection(queries.TASKS)
        self.events: TaskEvents = events or NoEvents()
        # Without a buffer of its own (tests, tools) every count is flushed at once.
        self.counters = counters or TaskCounters(db, shards=metric_shards, flush_s=0.0)

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
        equals = spec.equals
        if spec.sharded:
            query = query.where(filter=FieldFilter(queries.INDEX_SHARD, "in", queries.all_shards()))
            equals = equals[1:]
        for field in equals:
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

    # -- building blocks for features that follow tasks (shared/workflows) ----

    @property
    def documents(self) -> TaskDocuments:
        return self._docs

    def snapshot(self, task_id: str) -> Snapshot | None:
        """The task document as it is now, or None."""
        return self._read(task_id, WORKER_CALL)

    def create_tasks(self, tasks: Sequence[Task]) -> int:
        """Create tasks in batches; those that exist already are left as they are.

        Returns how many were created. Ids decide identity, so creating the
        same positions twice (a retried fan-out) makes no duplicate.
        """
        _, _, already_exists = _google_errors()
        created = 0
        for start in range(0, len(tasks), _CREATE_BATCH):
            chunk = [(t, self._docs.encode_new(t)) for t in tasks[start : start + _CREATE_BATCH]]
            batch = self._db.batch()
            for task, doc in chunk:
                batch.create(self._tasks.document(task.task_id), doc)
            try:
                batch.commit(**WORKER_CALL.kwargs())
                created += len(chunk)
            except already_exists:
                for task, doc in chunk:  # some exist: the rest one by one
                    with contextlib.suppress(already_exists):
                        self._tasks.document(task.task_id).create(doc, **WORKER_CALL.kwargs())
                        created += 1
            for task, _ in chunk:
                self.counters.submitted(task.type)
        self.counters.maybe_flush()
        return created

    def transition(
        self,
        snapshot: Snapshot,
        changes: dict[str, Any],
        *,
        terminal: Task | None = None,
        extra: Callable[[Any], None] | None = None,
    ) -> bool:
        """One conditional write on `snapshot`'s version; False if the document moved on.

        `terminal`: the task as it is after the write, when the write makes it
        terminal, so what follows a terminal transition is staged in this commit.
        """
        failed_precondition, not_found, _ = _google_errors()
        batch = self._db.batch()
        batch.update(
            self._tasks.document(snapshot.task_id), changes, option=self._after(snapshot.version)
        )
        if terminal is not None:
            self.events.stage(batch, terminal, terminal.status)
        if extra is not None:
            extra(batch)
        try:
            batch.commit(**WORKER_CALL.kwargs())
        except (failed_precondition, not_found):
            return False
        if terminal is not None:
            self.counters.finished(terminal.type, terminal.status.value)
            self.counters.maybe_flush()
            self.events.flush(terminal, terminal.status)
        return True

    def children_of(self, tenant_id: str, parent_id: str, *, open_fields: bool) -> list[Task]:
        """A parent's children in their fan-out order (results opened when asked)."""
        query = self._query(queries.CHILDREN, {"parent_id": parent_id})
        tasks: list[Task] = []
        for snap in query.stream(**SWEEP_CALL.kwargs()):
            doc = snap.to_dict() or {}
            if doc.get("tenant_id") != tenant_id:
                continue
            fields = _view_fields(doc) if open_fields else ()
            tasks.append(self._docs.decode(snap.id, doc, open_fields=fields))
        return tasks

    def children_by_status(self, tenant_id: str, parent_id: str) -> dict[str, int]:
        """How many of a parent's children are in each status (count aggregations)."""
        counts: dict[str, int] = {}
        for status in TaskStatus:
            query = self._query(
                queries.COUNT_CHILDREN_BY_STATUS,
                {"parent_id": parent_id, "status": status.value, "tenant_id": tenant_id},
            )
            result = query.count(alias="n").get(**STATUS_READ.kwargs())
            value = int(result[0][0].value) if result and result[0] else 0
            if value:
                counts[status.value] = value
        return counts

    # -- submit ------------------------------------------------------------

    def create(
        self,
        task: Task,
        idempotency: IdempotencyClaim | None,
        staged: Sequence[Staged] = (),
        *,
        extra: Callable[[Any], None] | None = None,
    ) -> Created:
        """Store a new task in one batch (with `staged` and `extra`'s writes).

        A replay if its Idempotency-Key was used; `StagedConflict` if a staged
        write's precondition failed (nothing was stored).
        """
        doc = self._docs.encode_new(task)
        if idempotency is None:
            batch = self._rebatch(task, doc, extra, staged)
            # Only a staged write can fail a precondition here: the task id is new.
            failed_precondition, _, already_exists = _google_errors()
            with self._riding(batch) as ride:
                try:
                    written = batch.commit(**SUBMIT_WRITE.kwargs())
                except (failed_precondition, already_exists) as exc:
                    if not staged:
                        raise
                    raise StagedConflict("a staged document changed under this submit") from exc
                ride.landed = True
            created = Created(
                task.task_id,
                replayed=False,
                fresh=_fresh(doc, written[0]),
                commit_time=written[0].update_time,
            )
        else:
            created = self._create_idempotent(task, doc, idempotency, extra, staged)
        if not created.replayed:
            self.counters.submitted(task.type)
        self.counters.maybe_flush()
        return created

    def _create_idempotent(
        self,
        task: Task,
        doc: dict[str, Any],
        claim: IdempotencyClaim,
        extra: Callable[[Any], None] | None,
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
        for _ in range(_MAX_CONFLICTS):
            batch = self._rebatch(task, doc, extra, staged)
            batch.create(idem_ref, record)
            try:
                written = batch.commit(**SUBMIT_WRITE.kwargs())
                return _created(task, doc, written)
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
                return Created(prior["task_id"], replayed=True, **self._prior_state(prior))
            # Past its window (TTL deletion lags by up to a day): the key starts afresh,
            # unless another submit renewed it first.
            renew = self._rebatch(task, doc, extra, staged)
            renew.update(idem_ref, record, option=self._after(snap.update_time))
            try:
                written = renew.commit(**SUBMIT_WRITE.kwargs())
                return _created(task, doc, written)
            except failed_precondition as exc:
                if staged:
                    # Ours or the record's precondition: the caller stages afresh either way.
                    raise StagedConflict("a staged document changed under this submit") from exc
                continue
            except already_exists as exc:
                # Only a staged create can exist already here (the task id is new).
                raise StagedConflict("a staged document changed under this submit") from exc
        raise Unavailable("the Idempotency-Key is contended; retry shortly")

    def _rebatch(
        self,
        task: Task,
        doc: dict[str, Any],
        extra: Callable[[Any], None] | None = None,
        staged: Sequence[Staged] = (),
    ) -> Any:
        batch = self._db.batch()
        batch.create(self._tasks.document(task.task_id), doc)
        if extra is not None:
            extra(batch)
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
        return Created(prior["task_id"], replayed=True, **self._prior_state(prior))

    def _prior_state(self, prior: dict[str, Any]) -> dict[str, Any]:
        """What the original answer said: a deferred dispatch, a scheduled start."""
        snap = self._read(str(prior["task_id"]), SUBMIT_WRITE)
        if snap is None:
            return {}
        return {
            "dispatch_pending": bool(snap.get("dispatch_pending")),
            "run_at": snap.get("run_at"),
        }

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

    def opened_from_message(self, message: TaskMessage) -> Opened | None:
        """The task as its message describes it when fresh: no read. None if it cannot tell.

        Anything that does not open (a forged or damaged message) falls back to
        reading the document, which is the only source of truth; so does a
        document that changed since, whose conditional write will then fail.
        """
        fresh = message.created
        if fresh is None or self._documents is None:
            return None
        try:
            from google.api_core.datetime_helpers import DatetimeWithNanoseconds

            doc: dict[str, Any] = {
                "tenant_id": message.tenant_id,
                "type": fresh.type,
                "status": TaskStatus.QUEUED.value,
                "attempts": 0,
                "max_attempts": fresh.max_attempts,
                "timeout_s": fresh.timeout_s,
                "created_at": fresh.created_at,
                "updated_at": fresh.created_at,
                "data_key": base64.b64decode(fresh.data_key, validate=True),
                "payload": base64.b64decode(fresh.payload, validate=True),
                "notify": fresh.notify,
                "hold": fresh.hold.model_dump() if fresh.hold is not None else None,
                "priority": fresh.priority,
            }
            version = DatetimeWithNanoseconds.from_rfc3339(fresh.version)  # type: ignore[no-untyped-call]
            key = self._docs.key_of(message.task_id, doc)
            task = self._docs.decode(message.task_id, doc, open_fields=("payload",), key=key)
        except Exception:  # noqa: BLE001 - whatever is wrong with it, the document decides
            log.info("task message not usable; reading the document")
            return None
        return Opened(Snapshot(message.task_id, doc, version), task=task, key=key)

    def load(self, tenant_id: str, task_id: str) -> Opened:
        snapshot = self._read(task_id, WORKER_CALL)
        if snapshot is None or snapshot.get("tenant_id") != tenant_id:
            return Opened(None)
        if TaskStatus(snapshot.status).terminal:
            return Opened(snapshot)
        try:
            key = self._docs.key_of(task_id, snapshot.doc)
            task = self._docs.decode(task_id, snapshot.doc, open_fields=("payload",), key=key)
        except IntegrityError as exc:
            return Opened(snapshot, problem=Problem.INTEGRITY, detail=exc.detail)
        except KeyUnavailable as exc:
            return Opened(snapshot, problem=Problem.KEY_UNAVAILABLE, detail=exc.detail)
        except Exception as exc:  # noqa: BLE001 - an undecodable document is a poison, not a crash
            return Opened(snapshot, problem=Problem.MALFORMED, detail=type(exc).__name__)
        return Opened(snapshot, task=task, key=key)

    def take_lease(
        self,
        opened: Opened,
        now: datetime,
        lease_until: datetime,
        slot: SlotClaim | None = None,
    ) -> Lease | None:
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
        failed_precondition, not_found, already_exists = _google_errors()
        slot_version: tuple[Any, ...] = ()
        if slot is not None:
            changes["blocked_by"] = None  # no longer waiting for a slot, if it was
            changes["handed_slot"] = None
        try:
            if slot is None:
                result = ref.update(
                    changes, option=self._after(snapshot.version), **WORKER_CALL.kwargs()
                )
                version = result.update_time
            else:
                # The lease and the slot in one commit: neither is taken without the other.
                batch = self._db.batch()
                batch.update(ref, changes, option=self._after(snapshot.version))
                slot.add(batch, lease_id)
                results = batch.commit(**WORKER_CALL.kwargs())
                version = results[0].update_time
                slot_version = tuple(r.update_time for r in results[1:])
        except not_found:
            return None  # gone (expired): the next read says so
        except (failed_precondition, already_exists):
            # Lost to another writer, or our own write landed and its answer was lost;
            # with a slot, perhaps only the slot was taken by someone else.
            again = self._read(task.task_id, WORKER_CALL)
            if again is not None and slot is not None and again.version == snapshot.version:
                raise SlotTaken(task.task_id) from None
            if again is None or again.get("lease_id") != lease_id:
                return None
            version = again.version
            if slot is not None:
                slot_version = slot.version_now(lease_id)
        claimed = task.model_copy(update={**changes, "status": TaskStatus.RUNNING})
        return Lease(
            claimed,
            key,
            lease_id,
            version,
            self._docs.sealed_size(snapshot.doc),
            slot_version=slot_version,
        )

    def park(self, opened: Opened, reason: str, now: datetime, ready_at: datetime) -> bool:
        """Mark a queued task as waiting for `reason` (a free slot), if it is still as read.

        `ready_at` is its place in the line of waiting tasks the releases wake.
        """
        snapshot = opened.snapshot
        assert snapshot is not None
        changes = {
            "blocked_by": reason,
            "ready_at": ready_at,
            "handed_slot": None,
            "updated_at": now,
        }
        return self._conditional(snapshot, changes)

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
    ) -> TaskStatus | None:
        """Record the attempt's outcome while `lease` still holds: the status stored, or None.

        None means the lease was lost (its late outcome is dropped). A task
        cancelled while the attempt ran is stored `cancelled` whatever the
        attempt produced. Transient failures are retried until `until` (epoch
        seconds), inside the lease: the handler's work should not be thrown away.
        `charged` (tokens the attempt reported) adds to the task's total in the
        same write, so a terminal commit settles every attempt's use.
        """
        if charged is not None:
            total = (lease.task.tokens_charged or 0) + charged
            lease.task = lease.task.model_copy(update={"tokens_charged": total})
        ref = self._tasks.document(lease.task.task_id)
        failed_precondition, _, _ = _google_errors()
        with lease.lock:
            version = lease.version
            for _ in range(_MAX_CONFLICTS):
                changes = self._outcome(lease, status, result, error)
                batch = self._db.batch()
                batch.update(ref, changes, option=self._after(version))
                if status.terminal:
                    # What follows the outcome sees the task as this commit records it.
                    recorded = lease.task.model_copy(
                        update={"status": status, "finished_at": changes["finished_at"]}
                    )
                    self.events.stage(batch, recorded, status)
                again: Snapshot | None = None
                with self._riding(batch) as ride:
                    try:
                        _until(functools.partial(batch.commit, **WORKER_CALL.kwargs()), until)
                        ride.landed = True
                    except failed_precondition:
                        again = self._read(lease.task.task_id, WORKER_CALL)
                        # Our write landed and its answer was lost, or another writer's did.
                        ride.landed = (
                            again is not None and again.get("finished_by") == lease.lease_id
                        )
                if ride.landed:
                    stored = status if again is None else TaskStatus(again.status)
                    self._count_attempt(lease, duration_s, stored)
                    return stored
                if again is None or again.get("lease_id") != lease.lease_id:
                    return None
                version = again.version  # touched by another writer; we still hold it
                if again.get("has_dependents") and not lease.task.has_dependents:
                    # A task now waits for this one: what follows must tell it.
                    lease.task = lease.task.model_copy(update={"has_dependents": True})
                if again.get("cancel_requested") and status is not TaskStatus.CANCELLED:
                    # Cancelled while the attempt ran: its late outcome is discarded.
                    status, result = TaskStatus.CANCELLED, None
                    error = TaskError(code="cancelled", message=CANCELLED_MESSAGE)
        raise Unavailable("the task document kept changing while its attempt was recorded")

    @contextlib.contextmanager
    def _riding(self, batch: Any) -> Iterator[_Ride]:
        """Counters due ride along in `batch`; kept for the next flush unless it landed."""
        rider = self.counters.ride(batch)
        ride = _Ride()
        try:
            yield ride
        finally:
            if rider is not None:
                rider(ride.landed)

    def _count_attempt(self, lease: Lease, duration_s: float, status: TaskStatus) -> None:
        self.counters.attempt(lease.task.type, duration_s, status.value)
        self.counters.maybe_flush()

    def _outcome(
        self, lease: Lease, status: TaskStatus, result: Any, error: TaskError | None
    ) -> dict[str, Any]:
        now = _now()
        changes: dict[str, Any] = {
            "status": status.value,
            "lease_id": None,
            "lease_until": None,
            "updated_at": now,
            "finished_by": lease.lease_id,
        }
        if lease.task.tokens_charged is not None:
            # Absolute, not an increment: the write is conditioned on the version read.
            changes["tokens_charged"] = lease.task.tokens_charged
        if status is TaskStatus.SUCCEEDED:
            changes.update(
                self._docs.seal_result(lease.key, result, stored_bytes=lease.stored_bytes)
            )
        if error is not None:
            changes.update(self._docs.seal_error(lease.key, error))
        if status.terminal:
            changes["finished_at"] = now
        if status is TaskStatus.FAILED:
            changes["dead_letter_pending"] = True
        return changes

    def record_progress(self, lease: Lease, progress: dict[str, Any]) -> bool:
        """Store an attempt's latest progress (sealed: messages may quote task data).

        Conditioned on the holder's last write; False once the lease is lost.
        """
        failed_precondition, _, _ = _google_errors()
        ref = self._tasks.document(lease.task.task_id)
        with lease.lock:
            for _ in range(_MAX_CONFLICTS):
                changes = {
                    "progress": lease.key.seal("progress", progress),
                    "progress_at": _now(),
                }
                try:
                    written = ref.update(
                        changes, option=self._after(lease.version), **WORKER_CALL.kwargs()
                    )
                except failed_precondition:
                    again = self._read(lease.task.task_id, WORKER_CALL)
                    if again is None or again.get("lease_id") != lease.lease_id:
                        return False
                    lease.version = again.version
                    continue
                lease.version = written.update_time
                return True
        return False

    def watch_cancel(self, task_id: str, *, after_s: float = 0.5) -> CancelWatch:
        """A listener on the task's cancellation flag, started only if the attempt lasts.

        Attempts shorter than `after_s` (most of them) never pay for a listener;
        a longer one learns of a cancellation within the listener's latency.
        """
        watch = CancelWatch()

        def on_snapshot(snapshots: list[Any], changes: Any, read_at: Any) -> None:
            for snap in snapshots:
                if snap.exists and (snap.to_dict() or {}).get("cancel_requested"):
                    watch.set()

        def start() -> None:
            with watch._lock:
                if watch._stopped:
                    return
                try:
                    watch._watch = self._tasks.document(task_id).on_snapshot(on_snapshot)
                except Exception:  # a watch that cannot start leaves the deadline to stop it
                    log.warning("cancellation listener did not start", exc_info=True)

        self._later.call(after_s, start)  # most attempts have stopped their watch by then
        return watch

    def cancel(self, tenant_id: str, task_id: str, now: datetime) -> Task:
        """Cancel a task: at once if it has not started, through its worker if it runs.

        Idempotent: a cancelled task is returned as it is. A task that succeeded
        or failed is a `Conflict`.
        """
        if not valid_task_id(task_id):
            raise NotFound(f"no task {task_id!r}")
        failed_precondition, _, _ = _google_errors()
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
            status = TaskStatus(snapshot.status)
            if status is TaskStatus.CANCELLED or doc.get("cancel_requested"):
                return _plain_task(task_id, doc)
            if status.terminal:
                raise Conflict(f"task {task_id} already {status}; only unfinished tasks cancel")
            changes: dict[str, Any] = {"cancel_requested": True, "cancel_requested_at": now}
            if status in (TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.WAITING):
                # Not running: it ends here, and no delivery will run it. A waiting
                # parent's children and continuation follow (shared/workflows/joins.py).
                changes.update(
                    {
                        "status": TaskStatus.CANCELLED.value,
                        "finished_at": now,
                        "updated_at": now,
                        "error": None,
                        "error_code": "cancelled",
                    }
                )
            batch = self._db.batch()
            batch.update(
                self._tasks.document(task_id), changes, option=self._after(snapshot.version)
            )
            task = _plain_task(task_id, {**doc, **changes})
            if task.status is TaskStatus.CANCELLED:
                self.events.stage(batch, task, TaskStatus.CANCELLED)
            try:
                batch.commit(**SUBMIT_WRITE.kwargs())
            except failed_precondition:
                continue
            if task.status is TaskStatus.CANCELLED:
                self.counters.finished(task.type, TaskStatus.CANCELLED.value)
                self.counters.maybe_flush()
                self.events.flush(task, TaskStatus.CANCELLED)
            return task
        raise Unavailable("the task kept changing while it was cancelled")

    def fail_unstarted(
        self,
        opened: Opened,
        error: TaskError,
        now: datetime,
        *,
        status: TaskStatus = TaskStatus.FAILED,
    ) -> bool:
        """End a task no delivery can start (tamper, lost key, exhausted, poison, cancelled).

        A failure enters the dead-letter outbox; a cancellation does not.
        """
        snapshot = opened.snapshot
        assert snapshot is not None
        changes: dict[str, Any] = {
            "status": status.value,
            "finished_at": now,
            "updated_at": now,
            "lease_id": None,
            "lease_until": None,
            "dead_letter_pending": status is TaskStatus.FAILED,
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
        task = opened.task or TaskDocuments.plain(snapshot.task_id, snapshot.doc)
        recorded = task.model_copy(update={"status": status, "finished_at": now})
        self.events.stage(batch, recorded, status)
        try:
            batch.commit(**WORKER_CALL.kwargs())
        except failed_precondition:
            return False
        self.counters.finished(str(snapshot.get("type")), status.value)
        self.counters.maybe_flush()
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
                doc = snap.to_dict() or {}
                found.setdefault(
                    snap.id,
                    StuckTask(
                        snap.id,
                        doc.get("tenant_id", ""),
                        reason,
                        snap.update_time,
                        doc.get("traceparent"),
                    ),
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
    """Retry `call` on transient failures until the epoch time `until`.

    `call` is a write guarded by a precondition (the finish), so a retry of one
    that landed fails the precondition and is recognised: CANCELLED, which the
    emulator answers a commit under load, is retried like an unavailable server.
    """
    from google.api_core import exceptions

    delay = 0.2
    while True:
        try:
            return call()
        except (
            exceptions.ServiceUnavailable,
            exceptions.DeadlineExceeded,
            exceptions.Cancelled,
            exceptions.RetryError,
        ):
            if time.time() + delay >= until:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _created(task: Task, doc: dict[str, Any], written: Any) -> Created:
    return Created(
        task.task_id,
        replayed=False,
        fresh=_fresh(doc, written[0]),
        commit_time=written[0].update_time,
    )


def _fresh(doc: dict[str, Any], written: Any) -> CreatedTask | None:
    """What the first delivery needs of a document just created (its first write's result).

    None for a `scheduled` task: its first delivery comes from the ticker, after
    the write that queued it, and a message describing it would start it early.
    """
    if doc["status"] != TaskStatus.QUEUED.value or doc.get("concurrency_key"):
        # A concurrency-limited task's first delivery reads its slots, and its document.
        return None
    return CreatedTask(
        version=written.update_time.rfc3339(),
        type=doc["type"],
        max_attempts=doc["max_attempts"],
        timeout_s=doc["timeout_s"],
        created_at=doc["created_at"],
        data_key=base64.b64encode(doc["data_key"]).decode("ascii"),
        payload=base64.b64encode(doc["payload"]).decode("ascii"),
        notify=bool(doc.get("notify")),
        hold=doc.get("hold"),
        priority=doc.get("priority"),
    )


def _plain_task(task_id: str, doc: dict[str, Any]) -> Task:
    """A Task from plain fields only: what a function without the private ring may say."""
    return TaskDocuments.plain(task_id, doc)


def _view_fields(doc: dict[str, Any]) -> tuple[str, ...]:
    status = doc.get("status")
    fields = ("progress",) if doc.get("progress") is not None else ()
    if status == TaskStatus.SUCCEEDED.value:
        return ("result", *fields)
    if status == TaskStatus.FAILED.value:
        return ("error", *fields)
    return fields


def _now() -> datetime:
    return datetime.now(UTC)
