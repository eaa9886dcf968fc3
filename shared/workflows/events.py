"""What follows a workflow node's end: the failure policy, and the reconciler behind it.

`WorkflowEvents` is a `TaskEvents` follower beside `Joins`. Under `fail_fast`
the first node that ends without succeeding marks its workflow halted (one
write conditioned on the version read, so one of many racing failures does
it) and cancels every unfinished node, dependents before their dependencies:
a node is cancelled before anything it waits for, so none of them is failed
as a dependency's casualty, and a running node is told to stop. Under
`continue` nothing happens here: the dependency machinery fails the failed
node's dependents (`dependency-failed`), and independent branches go on.

Nothing depends on a follow-up surviving. Every workflow carries `check_at`,
when the reconciler (run by the redispatch sweep) looks at it next: a creation
that never finished is abandoned and its nodes cancelled; a halt or a cancel
cut short is finished; a waiting node whose dependencies all ended long ago
(its follow-up was lost) is started or failed; a finished workflow loses its
`check_at`. Checks back off from 1 to 10 minutes while the workflow runs.

When the tenant listens for `workflow.finished`, each node's end also counts
the workflow's nodes that have not ended (three count aggregations and a read
of the workflow); the follow-up that finds none stages the event, under one id
per workflow so racing last nodes stage it once. The reconciler stages it too
for a workflow it finds finished (a lost follow-up), before forgetting it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.clients import SWEEP_CALL, WORKER_CALL
from shared.errors import AIAError
from shared.tasks.documents import TaskDocuments
from shared.tasks.models import TERMINAL, Task, TaskStatus, TokenHold
from shared.workflows.store import WorkflowSnapshot, WorkflowStore, holds_of

if TYPE_CHECKING:
    from shared.tasks.repository import FirestoreTaskRepository
    from shared.workflows.joins import Joins

log = logging.getLogger("aia.workflows")

# A multi-commit creation not finished by then was abandoned (the function's timeout is 60 s).
CREATION_GRACE = timedelta(seconds=120)
FIRST_CHECK = timedelta(seconds=60)
MAX_CHECK = timedelta(minutes=10)
# A dependency that ended this long ago should have started (or failed) its dependents.
FOLLOW_UP_GRACE = timedelta(seconds=30)
_MAX_CONFLICTS = 3


def halt(
    repository: FirestoreTaskRepository,
    workflow: WorkflowSnapshot,
    docs: Mapping[str, dict[str, Any] | None] | None = None,
) -> int:
    """Cancel every node not finished, dependents first; how many cancels were asked.

    `docs` (node name -> plain fields) skips the nodes known to be finished;
    without it every node is tried (a finished one refuses, which is fine).
    """
    now = datetime.now(UTC)
    asked = 0
    for name in reversed(workflow.order):
        if docs is not None:
            doc = docs.get(name)
            if doc is None or doc.get("status") in TERMINAL:
                continue
        task_id = workflow.nodes.get(name)
        if task_id is None:
            continue
        with contextlib.suppress(AIAError):  # finished meanwhile, or never stored
            repository.cancel(workflow.tenant_id, task_id, now)
            asked += 1
    return asked


class Refunds(Protocol):
    """Who gives back holds of tasks never stored (`shared.flow.ledger.BudgetEvents`)."""

    def refund(self, tenant_id: str, holds: Sequence[TokenHold], *, reason: str) -> int: ...


class FinishedListener(Protocol):
    """Who hears that a workflow's last node ended (the webhook outbox)."""

    def wants_workflow_finished(self, tenant_id: str) -> bool: ...

    def workflow_finished(
        self, tenant_id: str, workflow_id: str, *, traceparent: str | None = None
    ) -> bool: ...


class WorkflowEvents:
    """The `TaskEvents` follower of workflow nodes (and the workflows' reconciler)."""

    def __init__(
        self,
        repository: FirestoreTaskRepository,
        joins: Joins,
        finished: FinishedListener | None = None,
        refunds: Refunds | None = None,
    ) -> None:
        self._repository = repository
        self._joins = joins
        self._store = WorkflowStore(repository)
        self._finished = finished
        self._refunds = refunds

    def stage(self, batch: Any, task: Task, status: TaskStatus) -> None:
        return None  # nothing to record with the node: its status is the record

    def flush(self, task: Task, status: TaskStatus) -> None:
        if task.workflow_id is None or not status.terminal:
            return
        try:
            if status is not TaskStatus.SUCCEEDED:
                self._node_ended(task)
            self._maybe_finished(task)
        except Exception:  # the reconciler finishes what a failed follow-up left
            log.warning(
                "workflow follow-up failed",
                extra={"task_id": task.task_id, "workflow_id": task.workflow_id},
                exc_info=True,
            )

    def _maybe_finished(self, task: Task) -> None:
        """Stage workflow.finished if this was the last node to end (and someone listens)."""
        if self._finished is None or not self._finished.wants_workflow_finished(task.tenant_id):
            return
        assert task.workflow_id is not None
        workflow = self._store.read(task.workflow_id, WORKER_CALL)
        if workflow is None or workflow.tenant_id != task.tenant_id or workflow.get("creating"):
            return
        if self._unfinished(workflow, WORKER_CALL) <= 0:
            self._finished.workflow_finished(workflow.tenant_id, workflow.workflow_id)

    def _unfinished(self, workflow: WorkflowSnapshot, deadline: Any) -> int:
        total = int(workflow.get("node_count") or len(workflow.nodes))
        return total - sum(self._store.outcomes(workflow, deadline).values())

    def _node_ended(self, task: Task) -> None:
        """A node failed or was cancelled: under fail_fast, halt the workflow (once)."""
        assert task.workflow_id is not None
        for _ in range(_MAX_CONFLICTS):
            workflow = self._store.read(task.workflow_id, WORKER_CALL)
            if workflow is None or workflow.tenant_id != task.tenant_id:
                return
            if not _should_halt(workflow):
                return
            if self._mark_halted(workflow, task.node):
                log.info(
                    "workflow halted (fail_fast)",
                    extra={"workflow_id": workflow.workflow_id, "node": task.node},
                )
                halt(self._repository, workflow)
                return

    def _mark_halted(self, workflow: WorkflowSnapshot, node: str | None) -> bool:
        now = datetime.now(UTC)
        changes = {
            "halted": {"by": node, "at": now},
            "updated_at": now,
            "check_at": now + FIRST_CHECK,  # should this halt be cut short
        }
        return self._store.update(workflow.workflow_id, changes, workflow.version, WORKER_CALL)

    # -- the reconciler --------------------------------------------------------

    def reconcile(self, limit: int = 50) -> int:
        """Look at the workflows whose check is due; how many were looked at."""
        now = datetime.now(UTC)
        due = self._store.due(now, limit)
        for workflow in due:
            try:
                self._check(workflow, now)
            except Exception:  # one workflow must not stop the others; it is due again
                log.warning(
                    "workflow check failed",
                    extra={"workflow_id": workflow.workflow_id},
                    exc_info=True,
                )
        return len(due)

    def _check(self, workflow: WorkflowSnapshot, now: datetime) -> None:
        from google.cloud.firestore import DELETE_FIELD

        if workflow.get("creating"):
            created = workflow.get("created_at")
            if created is not None and created > now - CREATION_GRACE:
                return  # its creator may still be at it
            self._abandon(workflow, now)
            return
        outcomes = self._store.outcomes(workflow, SWEEP_CALL)
        total = int(workflow.get("node_count") or len(workflow.nodes))
        unfinished = total - sum(outcomes.values())
        ended_badly = outcomes["failed"] + outcomes["cancelled"] > 0
        if unfinished > 0 and not workflow.get("abandoned"):
            docs = self._store.node_docs(workflow, SWEEP_CALL)
            if workflow.get("status") == "cancelled" or workflow.get("halted"):
                halt(self._repository, workflow, docs)
            elif ended_badly and _should_halt(workflow):
                if not self._mark_halted(workflow, None):
                    return  # moved on meanwhile: due again next sweep
                halt(self._repository, workflow, docs)
                return
            else:
                self._unblock(workflow, docs, now)
        changes: dict[str, Any]
        if unfinished <= 0 and not workflow.get("abandoned") and self._finished is not None:
            # Its last node's follow-up may have been lost: stage it (once) before forgetting.
            self._finished.workflow_finished(workflow.tenant_id, workflow.workflow_id)
        if unfinished <= 0 or workflow.get("abandoned"):
            changes = {"check_at": DELETE_FIELD}
        else:
            checks = int(workflow.get("checks") or 0) + 1
            wait = min(FIRST_CHECK * 2**checks, MAX_CHECK)
            changes = {"check_at": now + wait, "checks": checks}
        self._store.update(workflow.workflow_id, changes, workflow.version, SWEEP_CALL)

    def _abandon(self, workflow: WorkflowSnapshot, now: datetime) -> None:
        """A creation cut short: nothing of it may run; the nodes stored are cancelled."""
        from google.cloud.firestore import DELETE_FIELD

        changes = {
            "creating": DELETE_FIELD,
            "abandoned": True,
            "updated_at": now,
            "check_at": DELETE_FIELD,
        }
        if not self._store.update(workflow.workflow_id, changes, workflow.version, SWEEP_CALL):
            return
        log.warning("workflow creation abandoned", extra={"workflow_id": workflow.workflow_id})
        docs = self._store.node_docs(workflow, SWEEP_CALL)
        halt(self._repository, workflow, docs)
        if self._refunds is not None and workflow.get("holds") is not None:
            # Stored nodes settle as they are cancelled; those never stored give theirs back.
            holds = holds_of(workflow.get("holds"))
            stored = {workflow.nodes[name] for name, doc in docs.items() if doc is not None}
            unstored = [h for task_id, h in holds.items() if task_id not in stored]
            self._refunds.refund(workflow.tenant_id, unstored, reason="workflow abandoned")

    def _unblock(
        self, workflow: WorkflowSnapshot, docs: Mapping[str, dict[str, Any] | None], now: datetime
    ) -> None:
        """Waiting nodes whose dependencies all ended a while ago: their follow-up was lost."""
        by_id = {workflow.nodes[name]: doc for name, doc in docs.items() if doc is not None}
        for name in workflow.order:
            doc = docs.get(name)
            if doc is None or doc.get("status") != TaskStatus.WAITING.value:
                continue
            deps = [by_id.get(d) for d in doc.get("depends_on") or ()]
            if not all(d is not None and d.get("status") in TERMINAL for d in deps):
                continue
            ended = [d.get("finished_at") for d in deps if d is not None]
            if any(e is None or e > now - FOLLOW_UP_GRACE for e in ended):
                continue  # the follow-up may still be on its way
            log.info(
                "starting a node whose follow-up was lost",
                extra={"workflow_id": workflow.workflow_id, "node": name},
            )
            self._joins.dependencies_created(TaskDocuments.plain(workflow.nodes[name], doc))


def _should_halt(workflow: WorkflowSnapshot) -> bool:
    return (
        workflow.get("failure_policy") == "fail_fast"
        and not workflow.get("halted")
        and workflow.get("status") != "cancelled"
    )
