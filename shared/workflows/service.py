"""Workflows: a static DAG of named task nodes, submitted, read, listed and cancelled.

Creating one stores the workflow document and one task per node before
anything runs. Node task ids derive from the workflow id and the node's name,
so a retried creation re-creates only what is missing. A node with
dependencies is stored `waiting`, with its dependencies' task ids and the
reverse index `dependents/{dep}/of/{node}` written in the same batches, so the
dependency machinery of `shared.workflows.joins` starts it once they all
succeeded (and fails it when one does not). Root nodes are queued and
published last, once every node is stored. A workflow's status is derived
from its nodes whenever it is read.

For a budgeted tenant the first commit also holds every node's price from one
escrow shard (`Admission.reserve_group`): a workflow the balance cannot cover
is a 402 and nothing is stored. Each node carries its part of that hold and
settles it when it ends, as a task submitted alone does; the parts of nodes an
abandoned creation never stored are refunded by the reconciler.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import queries
from shared.clients import SUBMIT_WRITE
from shared.config import Settings
from shared.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from shared.pages import page_request
from shared.security.crypto import TaskSealer
from shared.tasks.dispatch import TaskPublisher
from shared.tasks.models import Task, TaskMessage, TaskStatus, TokenHold
from shared.tasks.registry import TaskRegistry
from shared.tasks.repository import FirestoreTaskRepository, IdempotencyClaim, valid_task_id
from shared.tasks.submission import validate_idempotency_key
from shared.workflows.dag import Plan, node_task_id, parse_workflow
from shared.workflows.events import CREATION_GRACE, FIRST_CHECK, halt
from shared.workflows.models import (
    NodeView,
    WorkflowPage,
    WorkflowStatus,
    WorkflowSummary,
    WorkflowView,
)
from shared.workflows.store import (
    BATCH_WRITES,
    HoldRaced,
    WorkflowSnapshot,
    WorkflowStore,
    Write,
    holds_of,
)

if TYPE_CHECKING:
    from shared.flow.admission import Admission, GroupHold

log = logging.getLogger("aia.workflows")

# Root nodes are published this many at a time; the first wave that fails stops it.
PUBLISH_WAVE = 8
_MAX_CONFLICTS = 5
# Writes a budget hold adds to the first commit: the shard, the reserve entry, a counter.
HOLD_WRITES = 3


@dataclass(frozen=True)
class Accepted:
    workflow_id: str
    replayed: bool
    dispatched: bool  # every root published (False: flagged for the sweep)


class WorkflowService:
    def __init__(
        self,
        store: WorkflowStore,
        repository: FirestoreTaskRepository,
        publisher: TaskPublisher,
        registry: TaskRegistry,
        *,
        sealer: TaskSealer,
        settings: Settings,
        admission: Admission | None = None,
    ) -> None:
        self._admission = admission
        self._store = store
        self._repository = repository
        self._publisher = publisher
        self._registry = registry
        self._sealer = sealer
        self._settings = settings

    # -- creating ------------------------------------------------------------

    def create(self, tenant_id: str, body: Any, idempotency_key: str | None = None) -> Accepted:
        plan = parse_workflow(body, self._registry, diagnostic=self._settings.diagnostic_tasks)
        claim = self._claim(tenant_id, body, idempotency_key)
        now = datetime.now(UTC)
        workflow_id = uuid.uuid4().hex
        for _ in range(_MAX_CONFLICTS):
            group = self._hold(tenant_id, workflow_id, plan)
            holds = group.holds if group is not None else {}
            chunks = self._chunks(tenant_id, workflow_id, plan, now, holds, held=group is not None)
            doc = self._document(tenant_id, workflow_id, plan, now, creating=len(chunks) > 1)
            if group is not None:
                doc["holds"] = _stored_holds(plan, holds)
            try:
                begun = self._store.begin(
                    workflow_id, doc, claim, chunks[0], group.writes if group else None
                )
            except HoldRaced:
                assert group is not None
                assert self._admission is not None
                self._admission.group_done(group, committed=False)
                continue
            if group is not None and self._admission is not None and not begun.replayed:
                self._admission.group_done(group, committed=True)
            break
        else:
            raise Unavailable("the tenant's budget is contended; retry shortly")
        if begun.replayed:
            return self._replayed(tenant_id, begun.workflow_id, plan)
        if len(chunks) > 1:
            self._finish_creation(workflow_id, chunks[1:], begun.version)
        dispatched = self._publish_roots(tenant_id, workflow_id, plan)
        log.info(
            "workflow created",
            extra={"workflow_id": workflow_id, "nodes": len(plan.nodes), "edges": plan.edges},
        )
        return Accepted(workflow_id, replayed=False, dispatched=dispatched)

    def _hold(self, tenant_id: str, workflow_id: str, plan: Plan) -> GroupHold | None:
        """Every node's price held at once for a budgeted tenant (402 if it cannot be)."""
        if self._admission is None:
            return None
        members = {node_task_id(workflow_id, n): plan.nodes[n].type for n in plan.order}
        return self._admission.reserve_group(tenant_id, workflow_id, members)

    def _claim(
        self, tenant_id: str, body: Any, idempotency_key: str | None
    ) -> IdempotencyClaim | None:
        if idempotency_key is None:
            return None
        key = validate_idempotency_key(idempotency_key)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return IdempotencyClaim(
            tenant_id=tenant_id,
            # Its own namespace: a task's key and a workflow's key never meet.
            doc_id=self._sealer.digest(f"workflow idempotency\0{tenant_id}\0{key}".encode()),
            body_digest=self._sealer.digest(canonical),
        )

    def _document(
        self, tenant_id: str, workflow_id: str, plan: Plan, now: datetime, *, creating: bool
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "tenant_id": tenant_id,
            "failure_policy": plan.failure_policy,
            "nodes": {name: node_task_id(workflow_id, name) for name in plan.order},
            "order": list(plan.order),
            "node_count": len(plan.order),
            "created_at": now,
            "updated_at": now,
            # The reconciler's first look (shared/workflows/events.py).
            "check_at": now + (CREATION_GRACE if creating else FIRST_CHECK),
            "checks": 0,
            queries.EXPIRES_AT: now + timedelta(days=self._settings.task_retention_days),
        }
        if creating:
            doc["creating"] = True  # more than one commit: the last one clears it
        return doc

    def _chunks(
        self,
        tenant_id: str,
        workflow_id: str,
        plan: Plan,
        now: datetime,
        holds: Mapping[str, TokenHold],
        *,
        held: bool,
    ) -> list[list[Write]]:
        """Every write of the creation, cut into commits; the first leaves room for two more.

        Deterministic for one plan, so a replay resumes at the same boundaries.
        Dependents come before their dependencies and each node's index entries
        before its task: roots are stored last, and no task exists without the
        index its dependencies report through.
        """
        ids = {name: node_task_id(workflow_id, name) for name in plan.order}
        dependents = plan.dependents()
        documents = self._repository.documents
        writes: list[Write] = []
        for name in reversed(plan.order):
            request, deps = plan.nodes[name], plan.depends_on[name]
            task = Task(
                task_id=ids[name],
                tenant_id=tenant_id,
                type=request.type,
                status=TaskStatus.WAITING if deps else TaskStatus.QUEUED,
                payload=request.payload,
                max_attempts=request.max_attempts,
                timeout_s=request.timeout_s,
                created_at=now,
                updated_at=now,
                depends_on=[ids[d] for d in deps] or None,
                blocked_by=f"tasks:{len(deps)}" if deps else None,
                inputs_from="deps" if deps else None,
                has_dependents=bool(dependents[name]),
                workflow_id=workflow_id,
                node=name,
                priority=request.priority,
                hold=holds.get(ids[name]),
            )
            for position, dep in enumerate(deps):
                writes.append(
                    Write(
                        (queries.DEPENDENTS, ids[dep], "of", ids[name]),
                        {"tenant_id": tenant_id, "position": position},
                        create=False,
                    )
                )
            try:
                doc = documents.encode_new(task)
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(
                    f"node {name!r}: {exc.detail}", field=f"nodes.{name}.payload"
                ) from None
            writes.append(Write((queries.TASKS, ids[name]), doc, create=True, task_type=task.type))
        # The workflow document and the key's record, and the budget's hold if any.
        first = BATCH_WRITES - 2 - (HOLD_WRITES if held else 0)
        chunks = [writes[:first]]
        chunks += [writes[i : i + BATCH_WRITES] for i in range(first, len(writes), BATCH_WRITES)]
        return chunks

    def _finish_creation(self, workflow_id: str, rest: Sequence[list[Write]], version: Any) -> None:
        from google.cloud.firestore import DELETE_FIELD

        for chunk in rest:
            self._store.commit(chunk)
        for _ in range(_MAX_CONFLICTS):
            now = datetime.now(UTC)
            changes = {"creating": DELETE_FIELD, "check_at": now + FIRST_CHECK, "updated_at": now}
            if self._store.update(workflow_id, changes, version):
                return
            snap = self._store.read(workflow_id, SUBMIT_WRITE)
            if snap is None or snap.get("abandoned"):
                raise Unavailable(
                    "storing this workflow took too long and it was abandoned; submit it again"
                )
            if not snap.get("creating"):
                return  # a concurrent replay of the same request finished it
            version = snap.version
        raise Unavailable("the workflow kept changing while it was created")

    def _replayed(self, tenant_id: str, workflow_id: str, plan: Plan) -> Accepted:
        """The original answer; an interrupted original is finished first."""
        snap = self._store.read(workflow_id, SUBMIT_WRITE)
        if snap is None:
            raise Unavailable("the workflow of this Idempotency-Key is not readable; retry")
        if not snap.get("creating"):
            return Accepted(workflow_id, True, dispatched=not snap.get("dispatch_deferred"))
        created = snap.get("created_at") or datetime.now(UTC)
        stored = snap.get("holds")
        holds = holds_of(stored)
        chunks = self._chunks(tenant_id, workflow_id, plan, created, holds, held=stored is not None)
        self._finish_creation(workflow_id, chunks[1:], snap.version)
        return Accepted(workflow_id, True, self._publish_roots(tenant_id, workflow_id, plan))

    def _publish_roots(self, tenant_id: str, workflow_id: str, plan: Plan) -> bool:
        """Publish every root (they are stored queued); False if some were left for the sweep."""
        from concurrent.futures import ThreadPoolExecutor

        roots = [(node_task_id(workflow_id, r), plan.nodes[r].type) for r in plan.roots]

        def publish(root: tuple[str, str]) -> bool:
            task_id, task_type = root
            try:
                self._publisher.publish(
                    TaskMessage(task_id=task_id, tenant_id=tenant_id),
                    attributes={"type": task_type, "workflow_id": workflow_id},
                )
            except Unavailable:
                return False
            return True

        left: list[str] = []
        with ThreadPoolExecutor(max_workers=min(PUBLISH_WAVE, len(roots))) as pool:
            for start in range(0, len(roots), PUBLISH_WAVE):
                wave = roots[start : start + PUBLISH_WAVE]
                sent = list(pool.map(publish, wave))
                if not all(sent):
                    # Pub/Sub is failing: the rest wait for the sweep rather than this request.
                    left = [r for (r, _), ok in zip(wave, sent, strict=True) if not ok]
                    left += [r for r, _ in roots[start + PUBLISH_WAVE :]]
                    break
        if not left:
            return True
        log.warning(
            "workflow roots left for redispatch",
            extra={"workflow_id": workflow_id, "roots": len(left)},
        )
        try:
            self._store.flag_dispatch_pending(workflow_id, left)
        except Exception:
            # Stored queued: the age-based sweep still publishes them.
            log.exception("could not flag roots for redispatch", extra={"workflow_id": workflow_id})
        return False

    # -- reading -------------------------------------------------------------

    def get(self, tenant_id: str, workflow_id: str) -> WorkflowView:
        snap = self._owned(tenant_id, workflow_id)
        return view_of(snap, self._store.node_docs(snap))

    def list(self, tenant_id: str, params: Mapping[str, str]) -> WorkflowPage:
        wanted = page_request(params)
        snaps, token = self._store.page(tenant_id, limit=wanted.limit, page_token=wanted.page_token)
        now = datetime.now(UTC)
        summaries = [self._summary(snap) for snap in snaps if not _expired(snap, now)]
        return WorkflowPage(workflows=summaries, next_page_token=token)

    def _summary(self, snap: WorkflowSnapshot) -> WorkflowSummary:
        outcomes = self._store.outcomes(snap)
        total = int(snap.get("node_count") or len(snap.nodes))
        # An abandoned creation's missing nodes never finish: they count as finished.
        unfinished = 0 if snap.get("abandoned") else max(0, total - sum(outcomes.values()))
        return WorkflowSummary(
            workflow_id=snap.workflow_id,
            status=derive_status(
                snap, unfinished=unfinished, all_succeeded=outcomes["succeeded"] == total
            ),
            failure_policy=snap.get("failure_policy"),
            created_at=snap.get("created_at"),
            node_count=total,
            counts={**outcomes, "unfinished": unfinished},
        )

    def _owned(self, tenant_id: str, workflow_id: str) -> WorkflowSnapshot:
        if not valid_task_id(workflow_id):
            raise NotFound(f"no workflow {workflow_id!r}")
        snap = self._store.read(workflow_id)
        # Another tenant's workflow is indistinguishable from a missing one.
        if snap is None or snap.tenant_id != tenant_id or _expired(snap, datetime.now(UTC)):
            raise NotFound(f"no workflow {workflow_id!r}")
        return snap

    # -- cancelling ----------------------------------------------------------

    def cancel(self, tenant_id: str, workflow_id: str) -> WorkflowView:
        """Cancel every unfinished node (sinks first). Idempotent; a finished workflow is a 409."""
        snap = self._owned(tenant_id, workflow_id)
        for _ in range(_MAX_CONFLICTS):
            docs = self._store.node_docs(snap)
            if snap.get("status") == "cancelled":
                halt(self._repository, snap, docs)  # again: finishes a cancel that was cut short
                return self.get(tenant_id, workflow_id)
            status = view_of(snap, docs).status
            if status != "running":
                raise Conflict(
                    f"workflow {workflow_id} already {status}; only a running workflow cancels"
                )
            now = datetime.now(UTC)
            changes = {
                "status": "cancelled",
                "cancelled_at": now,
                "updated_at": now,
                # Should this request die half-way, the reconciler finishes the cancel.
                "check_at": now + FIRST_CHECK,
            }
            if self._store.update(workflow_id, changes, snap.version):
                halt(self._repository, snap, docs)
                return self.get(tenant_id, workflow_id)
            snap = self._owned(tenant_id, workflow_id)
        raise Unavailable("the workflow kept changing while it was cancelled")


def derive_status(
    snap: WorkflowSnapshot, *, unfinished: int, all_succeeded: bool
) -> WorkflowStatus:
    """Running while any node is unfinished; succeeded when all did; cancelled after a cancel."""
    if snap.get("status") == "cancelled":
        return "cancelled"
    if snap.get("creating"):
        return "running"
    if unfinished:
        return "running"
    return "succeeded" if all_succeeded else "failed"


def view_of(snap: WorkflowSnapshot, docs: Mapping[str, dict[str, Any] | None]) -> WorkflowView:
    names = {task_id: name for name, task_id in snap.nodes.items()}
    nodes: dict[str, NodeView] = {}
    for name in snap.order:
        task_id = snap.nodes[name]
        doc = docs.get(name)
        if doc is None:
            # Never stored (a creation that was abandoned), or removed by retention.
            nodes[name] = NodeView(
                task_id=task_id,
                type=None,
                status=TaskStatus.CANCELLED,
                depends_on=[],
                attempts=0,
                error_code="not-created",
            )
            continue
        node_status = TaskStatus(doc["status"])
        nodes[name] = NodeView(
            task_id=task_id,
            type=doc.get("type"),
            status=node_status,
            depends_on=[names.get(d, d) for d in doc.get("depends_on") or ()],
            attempts=int(doc.get("attempts") or 0),
            created_at=doc.get("created_at"),
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            error_code=doc.get("error_code")
            if node_status.terminal and node_status is not TaskStatus.SUCCEEDED
            else None,
        )
    existing = [n for name, n in nodes.items() if docs.get(name) is not None]
    unfinished = sum(not n.status.terminal for n in existing)
    status = derive_status(
        snap,
        unfinished=unfinished,
        all_succeeded=len(existing) == len(nodes)
        and all(n.status is TaskStatus.SUCCEEDED for n in existing),
    )
    finished = [n.finished_at for n in existing if n.finished_at is not None]
    return WorkflowView(
        workflow_id=snap.workflow_id,
        status=status,
        failure_policy=snap.get("failure_policy"),
        created_at=snap.get("created_at"),
        finished_at=max(finished) if status != "running" and finished else None,
        cancelled_at=snap.get("cancelled_at"),
        counts=dict(Counter(n.status.value for n in nodes.values())),
        nodes=nodes,
    )


def _expired(snap: WorkflowSnapshot, now: datetime) -> bool:
    expires = snap.get(queries.EXPIRES_AT)
    return expires is not None and expires <= now


def _stored_holds(plan: Plan, holds: Mapping[str, TokenHold]) -> dict[str, Any]:
    """What the workflow document keeps of its nodes' holds: the shard and each node's part."""
    shard = next(iter(holds.values())).shard if holds else 0
    return {"shard": shard, "tokens": {h.id: h.tokens for h in holds.values()}}
