"""Fan-out and fan-in: storing the children, counting them in, firing the continuation once.

When a handler returns a `FanOut`, `Joins.start` creates every child (queued)
and the continuation (waiting on the join) before the parent becomes
`waiting` and lets its worker go. Each child's terminal commit also writes a
join record of its own (`joins/{parent}/done/{child}`): no document takes more
than one write per child, whatever the rate children finish at. Counting is
done in buckets of 100 records (one small count aggregation per child), the
last child of a bucket marks the bucket done (a `create`, so exactly one does),
and whoever completes the last bucket fires the continuation: a write from
`waiting` to `queued` conditioned on its version, so it happens once however
many completions race, and a duplicate completion changes nothing. A
reconciler (in the redispatch sweep) finishes any join whose counts are
complete but whose continuation never started.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import queries
from shared.errors import AIAError, BudgetExhausted, Unavailable
from shared.tasks.models import Task, TaskMessage, TaskStatus, TokenHold
from shared.workflows.fanout import (
    FanOut,
    FanOutOverBudget,
    InvalidFanOut,
    bucket_of,
    buckets,
    child_id,
    continuation_id,
)

if TYPE_CHECKING:
    from shared.flow.admission import Admission
    from shared.tasks.dispatch import TaskPublisher
    from shared.tasks.registry import TaskRegistry
    from shared.tasks.repository import FirestoreTaskRepository, Lease, Snapshot

log = logging.getLogger("aia.joins")

DEFAULT_ATTEMPTS = 3
DEFAULT_TIMEOUT_S = 60
# A join untouched this long is looked at by the reconciler.
RECONCILE_AFTER = timedelta(seconds=30)


class Joins:
    """The fan-out's Firestore side; also the `TaskEvents` follower children report through."""

    def __init__(
        self,
        repository: FirestoreTaskRepository,
        registry: Callable[[], TaskRegistry],
        publisher: Callable[[], TaskPublisher] | None,
        admission: Callable[[], Admission] | None = None,
    ) -> None:
        # Both are built on first use: a function that never fans out pays for neither.
        self._repository = repository
        self._registry_of = registry
        self._publisher_of = publisher
        self._admission_of = admission  # budgeted tenants' fan-outs hold their children
        self._db = repository._db  # the same database: the join records live beside
        self._local = threading.local()  # follow-ups queued while one runs (see `flush`)

    @property
    def _registry(self) -> TaskRegistry:
        return self._registry_of()

    @property
    def _publisher(self) -> TaskPublisher | None:
        return self._publisher_of() if self._publisher_of is not None else None

    # -- starting a fan-out (the worker, holding the parent's lease) -------------

    def start(self, lease: Lease, plan: FanOut, now: datetime) -> TaskStatus | None:
        """Store children and continuation, then let the parent wait; None if the lease was lost."""
        parent = lease.task
        children = [
            self._task(step, child_id(parent.task_id, i), parent, now, index=i)
            for i, step in enumerate(plan.children)
        ]
        continuation = None
        if plan.then is not None:
            continuation = self._task(
                plan.then, continuation_id(parent.task_id), parent, now, waiting=True
            )
        holds = self._hold(lease, [*children, *([continuation] if continuation else [])])
        if holds is None:
            return None  # the lease was lost
        if holds:
            children = [c.model_copy(update={"hold": holds.get(c.task_id)}) for c in children]
            if continuation is not None:
                continuation = continuation.model_copy(
                    update={"hold": holds.get(continuation.task_id)}
                )
        # The continuation first: a join met early must find it.
        self._repository.create_tasks([continuation] if continuation else [])
        self._repository.create_tasks(children)
        changes: dict[str, Any] = {
            "status": TaskStatus.WAITING.value,
            "lease_id": None,
            "lease_until": None,
            "finished_by": lease.lease_id,
            "updated_at": now,
            "join": {"mode": plan.join, "total": len(children), "buckets": buckets(len(children))},
            "continuation_id": continuation.task_id if continuation else None,
            "blocked_by": f"children:{len(children)}",
        }
        snapshot = self._repository.snapshot(parent.task_id)
        if snapshot is None or snapshot.get("lease_id") != lease.lease_id:
            return None
        if not self._repository.transition(snapshot, changes):
            return None
        self._publish_all(children)
        self.check(parent.tenant_id, parent.task_id)  # children may have finished already
        return TaskStatus.WAITING

    def _hold(self, lease: Lease, tasks: list[Task]) -> dict[str, TokenHold] | None:
        """For a budgeted tenant, every child's price held before any child exists.

        One commit holds the total from one escrow shard and records it on the
        parent (conditioned on its lease), so a retried attempt finds it and
        holds nothing twice. {} without a budget; None if the lease was lost.
        FanOutOverBudget (the parent fails) when the balance cannot cover it.
        """
        admission = self._admission_of() if self._admission_of is not None else None
        if admission is None or not admission.budgeted(lease.task.tenant_id):
            return {}  # nothing to hold, and no read for it
        parent = lease.task
        members = {t.task_id: t.type for t in tasks}
        for _ in range(5):
            snapshot = self._repository.snapshot(parent.task_id)
            if snapshot is None or snapshot.get("lease_id") != lease.lease_id:
                return None
            held = snapshot.get("fanout_hold")
            if isinstance(held, dict):
                prices = {m: admission.price(t) for m, t in members.items()}
                shard = int(held["shard"])
                return {
                    m: TokenHold(id=m, tokens=p, shard=shard) for m, p in prices.items() if p > 0
                }
            try:
                group = admission.reserve_group(
                    parent.tenant_id, f"{parent.task_id}.fanout", members, label="fan-out"
                )
            except BudgetExhausted as exc:
                raise FanOutOverBudget(exc.detail) from None
            if group is None:
                return {}
            from google.api_core.exceptions import AlreadyExists

            record = {"shard": group.writes.hold.shard, "tokens": group.writes.hold.tokens}
            try:
                held_now = self._repository.transition(
                    snapshot, {"fanout_hold": record}, extra=group.writes.stage
                )
            except AlreadyExists:
                held_now = False  # the shard was created meanwhile, or our commit landed
            admission.group_done(group, committed=held_now)
            if held_now:
                return group.holds
        raise Unavailable("the parent kept changing while its fan-out was held")

    def _task(
        self,
        step: Any,
        task_id: str,
        parent: Task,
        now: datetime,
        *,
        index: int | None = None,
        waiting: bool = False,
    ) -> Task:
        where = f"children[{index}]" if index is not None else "then"
        try:
            kind = self._registry.get(step.type)
            self._registry.parse_payload(kind, step.payload)
        except AIAError as exc:
            raise InvalidFanOut(f"{where}: {exc.detail}") from None
        return Task(
            task_id=task_id,
            tenant_id=parent.tenant_id,
            type=step.type,
            status=TaskStatus.WAITING if waiting else TaskStatus.QUEUED,
            payload=step.payload,
            max_attempts=step.max_attempts or DEFAULT_ATTEMPTS,
            timeout_s=step.timeout_s or DEFAULT_TIMEOUT_S,
            created_at=now,
            updated_at=now,
            parent_id=None if waiting else parent.task_id,
            child_index=index,
            continues=parent.task_id if waiting else None,
            blocked_by=f"join:{parent.task_id}" if waiting else None,
            inputs_from=f"children:{parent.task_id}" if waiting else None,
            priority=parent.priority,  # a fan-out's children and continuation keep its place
        )

    def _publish_all(self, tasks: list[Task]) -> None:
        if self._publisher is None:
            return
        for task in tasks:
            self._publish(task)

    def _publish(self, task: Task) -> None:
        assert self._publisher is not None
        try:
            self._publisher.publish(
                TaskMessage(task_id=task.task_id, tenant_id=task.tenant_id),
                attributes={"type": task.type, "parent_id": task.parent_id or ""},
            )
        except AIAError:
            # Stored queued: the stale-queued sweep publishes it after its grace.
            log.warning("child publish failed; left for the sweep", extra={"task_id": task.task_id})

    # -- TaskEvents: children and continuations reporting in -------------------

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        if task.parent_id is None or task.child_index is None:
            return
        record = {
            "tenant_id": task.tenant_id,
            "index": task.child_index,
            "bucket": bucket_of(task.child_index),
            "status": status.value,
            "finished_at": datetime.now(UTC),
        }
        batch.set(self._done(task.parent_id).document(task.task_id), record)

    def flush(self, task: Task, status: TaskStatus) -> None:
        # A follow-up that ends a task (a dependent failing with its dependency) is
        # flushed from within this one: queued and run here in turn, not nested, so a
        # long chain of dependents fails without the stack growing with it.
        queue: deque[tuple[Task, TaskStatus]] | None = getattr(self._local, "queue", None)
        if queue is not None:
            queue.append((task, status))
            return
        self._local.queue = queue = deque([(task, status)])
        try:
            while queue:
                self._follow(*queue.popleft())
        finally:
            self._local.queue = None

    def _follow(self, task: Task, status: TaskStatus) -> None:
        try:
            if task.parent_id is not None and task.child_index is not None:
                self._child_finished(task, status)
            elif task.continues is not None:
                self._continuation_finished(task, status)
            elif task.join is not None and status is TaskStatus.CANCELLED:
                self._cancel_family(task)
            if task.has_dependents:
                self._dependents_of(task, status)
        except Exception:  # the reconciler finishes what a failed follow-up left
            log.warning("join follow-up failed", extra={"task_id": task.task_id}, exc_info=True)

    def _child_finished(self, child: Task, status: TaskStatus) -> None:
        assert child.parent_id is not None
        assert child.child_index is not None
        parent = self._waiting_parent(child.tenant_id, child.parent_id)
        if parent is None:
            return
        if parent.get("join", {}).get("met"):
            # Decided already (an `any` join's winner): make sure the continuation runs.
            self._fire(parent, winner=parent.get("join", {}).get("winner"))
            return
        mode = parent.get("join", {}).get("mode")
        if mode == "any" and status is TaskStatus.SUCCEEDED:
            self._fire(parent, winner=child.task_id)
            return
        if mode == "all" and status is not TaskStatus.SUCCEEDED:
            self._fail(parent, "child-failed", f"child {child.child_index} {status}")
            return
        if self._bucket_complete(child.parent_id, bucket_of(child.child_index), parent):
            self._join_met(parent)

    def _bucket_complete(self, parent_id: str, bucket: int, parent: Snapshot) -> bool:
        """Whether the child just recorded completed its bucket, and then all buckets.

        Counts are strongly consistent: of two children finishing together, the
        later committer sees both records, so a bucket is never left uncounted.
        """
        from google.api_core.exceptions import AlreadyExists
        from google.cloud.firestore import FieldFilter

        join = parent.get("join", {})
        total, count_buckets = int(join.get("total", 0)), int(join.get("buckets", 0))
        size = min(100, total - bucket * 100)
        done = self._done(parent_id).where(filter=FieldFilter("bucket", "==", bucket))
        if _count(done) < size:
            return False
        try:
            self._buckets(parent_id).document(str(bucket)).create({"done": True})
        except AlreadyExists:
            return False  # another child of this bucket got there first
        return _count(self._buckets(parent_id)) >= count_buckets

    def _join_met(self, parent: Snapshot) -> None:
        mode = parent.get("join", {}).get("mode")
        if mode == "any":
            # Every child finished and none succeeded (a success would have fired).
            self._fail(parent, "no-child-succeeded", "every child failed or was cancelled")
            return
        self._fire(parent)

    def _fire(self, parent: Snapshot, winner: str | None = None) -> None:
        """Start the continuation (once), or complete a parent that has none.

        The parent's join is marked met first, with a write conditioned on its
        version: of all the completions racing here one wins, and a child that
        finishes later (a sibling an `any` join cancels) finds the join decided.
        """
        continuation = parent.get("continuation_id")
        if continuation is None:
            done = _task_of(self._repository, parent, TaskStatus.SUCCEEDED)
            self._repository.transition(parent, _terminal(TaskStatus.SUCCEEDED), terminal=done)
            return
        met = {
            "join.met": True,
            "join.winner": winner,
            "blocked_by": f"continuation:{continuation}",
            "updated_at": datetime.now(UTC),
        }
        current: Snapshot | None = parent
        for _ in range(3):
            if current is None or current.status != TaskStatus.WAITING:
                return
            if current.get("join", {}).get("met"):
                break  # decided by another completion: only make sure it started
            if self._repository.transition(current, met):
                break
            current = self._repository.snapshot(parent.task_id)
        self._start_continuation(continuation, winner)
        if winner is not None:
            self._cancel_children(parent)

    def _start_continuation(self, continuation: str, winner: str | None) -> None:
        snapshot = self._repository.snapshot(continuation)
        if snapshot is None or snapshot.status != TaskStatus.WAITING:
            return  # started already (or cancelled): a duplicate completion changes nothing
        changes: dict[str, Any] = {
            "status": TaskStatus.QUEUED.value,
            "blocked_by": None,
            "updated_at": datetime.now(UTC),
        }
        if winner is not None:
            changes["inputs_from"] = f"task:{winner}"
        if not self._repository.transition(snapshot, changes):
            return  # another completion started it first
        if self._publisher is not None:
            self._publish(_task_of(self._repository, snapshot, TaskStatus.QUEUED))

    def _fail(self, parent: Snapshot, code: str, message: str) -> None:
        log.info("fan-out failed", extra={"task_id": parent.task_id, "code": code, "why": message})
        changes = {
            **_terminal(TaskStatus.FAILED),
            "error": None,
            "error_code": code,
            "dead_letter_pending": True,
        }
        failed = _task_of(self._repository, parent, TaskStatus.FAILED)
        if self._repository.transition(parent, changes, terminal=failed):
            self._cancel_family(failed)

    def _continuation_finished(self, continuation: Task, status: TaskStatus) -> None:
        """The parent ends as its continuation did, with the continuation's result."""
        assert continuation.continues is not None
        parent = self._waiting_parent(continuation.tenant_id, continuation.continues)
        if parent is None or parent.get("continuation_id") != continuation.task_id:
            return
        changes = {**_terminal(status), "result_from": continuation.task_id}
        if status is TaskStatus.FAILED:
            changes.update(
                {
                    "error": None,
                    "error_code": "continuation-failed",
                    "dead_letter_pending": True,
                }
            )
        self._repository.transition(
            parent, changes, terminal=_task_of(self._repository, parent, status)
        )

    # -- cancelling a family ---------------------------------------------------

    def _cancel_family(self, parent: Task | Snapshot) -> None:
        """The continuation and every child that has not finished, cancelled."""
        snapshot = (
            parent if not isinstance(parent, Task) else self._repository.snapshot(parent.task_id)
        )
        if snapshot is None:
            return
        self._cancel_children(snapshot)
        continuation = snapshot.get("continuation_id")
        if continuation is not None:
            self._cancel(snapshot.get("tenant_id"), continuation)

    def _cancel_children(self, parent: Snapshot) -> None:
        tenant = str(parent.get("tenant_id"))
        for child in self._repository.children_of(tenant, parent.task_id, open_fields=False):
            if not child.status.terminal:
                self._cancel(tenant, child.task_id)

    def _cancel(self, tenant_id: str, task_id: str) -> None:
        with contextlib.suppress(AIAError):  # finished meanwhile, or gone: nothing to cancel
            self._repository.cancel(tenant_id, task_id, datetime.now(UTC))

    # -- dependencies: a task that waits for other tasks to succeed --------------

    def stage_dependents(self, task: Task) -> Callable[[Any], None]:
        """Writes for `task`'s submit batch: each dependency learns it has a dependent."""
        from google.cloud.firestore import ArrayUnion

        def stage(batch: Any) -> None:
            for position, dep in enumerate(task.depends_on or ()):
                batch.set(
                    self._dependents(dep).document(task.task_id),
                    {"tenant_id": task.tenant_id, "position": position},
                )
                # Blind and field-wise: the dependency's own conditional writes retry after it.
                batch.update(
                    self._db.collection(queries.TASKS).document(dep),
                    {"has_dependents": True, "dependents_seen": ArrayUnion([task.task_id])},
                )

        return stage

    def dependencies_created(self, task: Task) -> None:
        """After the submit: count what already finished (a dependency may have ended first)."""
        for dep in task.depends_on or ():
            snapshot = self._repository.snapshot(dep)
            if snapshot is not None and TaskStatus(snapshot.status).terminal:
                self._dependency_finished(task.tenant_id, task.task_id, dep, snapshot.status)

    def _dependents_of(self, task: Task, status: TaskStatus) -> None:
        for record in self._dependents(task.task_id).stream():
            doc = record.to_dict() or {}
            if doc.get("tenant_id") == task.tenant_id:
                self._dependency_finished(task.tenant_id, record.id, task.task_id, status.value)

    def _dependency_finished(self, tenant_id: str, dependent: str, dep: str, status: str) -> None:
        waiting = self._waiting_parent(tenant_id, dependent)
        if waiting is None or dep not in (waiting.get("depends_on") or ()):
            return
        if status != TaskStatus.SUCCEEDED.value:
            self._fail(waiting, "dependency-failed", f"dependency {dep} {status}")
            return
        self._done(dependent).document(dep).set({"tenant_id": tenant_id, "status": status})
        if _count(self._done(dependent)) < len(waiting.get("depends_on") or ()):
            return
        changes = {
            "status": TaskStatus.QUEUED.value,
            "blocked_by": None,
            "updated_at": datetime.now(UTC),
        }
        # Of every completion that counts the last one, one write wins: the task starts once.
        if self._repository.transition(waiting, changes) and self._publisher is not None:
            self._publish(_task_of(self._repository, waiting, TaskStatus.QUEUED))

    def _dependents(self, task_id: str) -> Any:
        return self._db.collection(queries.DEPENDENTS).document(task_id).collection("of")

    # -- reading -----------------------------------------------------------------

    def check(self, tenant_id: str, parent_id: str) -> None:
        """Count a parent's whole join (the reconciler, and right after a fan-out starts)."""
        parent = self._waiting_parent(tenant_id, parent_id)
        if parent is None or parent.get("join") is None:
            return
        join = parent.get("join", {})
        if join.get("met"):
            self._fire(parent, winner=join.get("winner"))
            return
        records = list(self._done(parent_id).stream())
        statuses = [(r.to_dict() or {}).get("status") for r in records]
        if join.get("mode") == "any" and TaskStatus.SUCCEEDED.value in statuses:
            winner = next(r.id for r, s in zip(records, statuses, strict=True) if s == "succeeded")
            self._fire(parent, winner=winner)
            return
        if join.get("mode") == "all" and any(s != TaskStatus.SUCCEEDED.value for s in statuses):
            self._fail(parent, "child-failed", "a child failed or was cancelled")
            return
        if len(records) >= int(join.get("total", 0)):
            self._join_met(parent)

    def reconcile(self, limit: int = 200) -> int:
        """Finish joins left half-done (a follow-up that died): counted, fired, completed."""
        from google.cloud.firestore import FieldFilter

        cutoff = datetime.now(UTC) - RECONCILE_AFTER
        query = (
            self._db.collection(queries.TASKS)
            .where(filter=FieldFilter("status", "==", TaskStatus.WAITING.value))
            .where(filter=FieldFilter("updated_at", "<", cutoff))
            .order_by("updated_at")
            .limit(limit)
        )
        seen = 0
        for snap in query.stream():
            doc = snap.to_dict() or {}
            seen += 1
            tenant = str(doc.get("tenant_id"))
            if doc.get("join") is not None:
                self.check(tenant, snap.id)
                continuation = doc.get("continuation_id")
                if continuation is not None:
                    finished = self._repository.snapshot(continuation)
                    if finished is not None and TaskStatus(finished.status).terminal:
                        task = _task_of(self._repository, finished, TaskStatus(finished.status))
                        self._continuation_finished(task, task.status)
        return seen

    def _waiting_parent(self, tenant_id: str, parent_id: str) -> Snapshot | None:
        parent = self._repository.snapshot(parent_id)
        if parent is None or parent.get("tenant_id") != tenant_id:
            return None  # a child never reaches into another tenant's task
        if parent.status != TaskStatus.WAITING:
            return None
        return parent

    def _done(self, parent_id: str) -> Any:
        return self._db.collection(queries.JOINS).document(parent_id).collection(queries.JOIN_DONE)

    def _buckets(self, parent_id: str) -> Any:
        return (
            self._db.collection(queries.JOINS).document(parent_id).collection(queries.JOIN_BUCKETS)
        )


def _count(query: Any) -> int:
    result = query.count(alias="n").get()
    return int(result[0][0].value) if result and result[0] else 0


def _terminal(status: TaskStatus) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "status": status.value,
        "finished_at": now,
        "updated_at": now,
        "blocked_by": None,
        "lease_id": None,
        "lease_until": None,
    }


def _task_of(repository: FirestoreTaskRepository, snapshot: Snapshot, status: TaskStatus) -> Task:
    # Plain fields only: the sweep that reconciles holds no key ring.
    from shared.tasks.documents import TaskDocuments

    task = TaskDocuments.plain(snapshot.task_id, snapshot.doc)
    return task.model_copy(update={"status": status})


__all__ = ["InvalidFanOut", "Joins"]
