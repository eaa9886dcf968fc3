"""Workflow documents on Firestore: `workflows/{id}`, beside the node tasks they name.

A workflow document holds what its nodes cannot say: the tenant, the failure
policy, node name -> task id, a topological order, when it was created, and a
status only once a user cancelled it. Everything else (running, succeeded,
failed) is derived from the nodes when read. Like the task repository, no path
uses a transaction: each change is one write conditioned on the version read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import queries
from shared.clients import STATUS_READ, SUBMIT_WRITE, SWEEP_CALL, WORKER_CALL, Deadline
from shared.errors import IdempotencyMismatch, Unavailable
from shared.tasks.models import TokenHold
from shared.tasks.repository import (
    IDEMPOTENCY_TTL,
    IdempotencyClaim,
    Staged,
    decode_page_token,
    encode_page_token,
)

if TYPE_CHECKING:
    from shared.tasks.repository import FirestoreTaskRepository

# Writes per commit when a workflow is created (the repository's fan-out batches too).
BATCH_WRITES = 400
_MAX_CONFLICTS = 5
# The node fields a workflow view and the reconciler read: never the sealed data.
NODE_FIELDS = (
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
    "error_code",
    "depends_on",
    "has_dependents",
    "workflow_id",
    "node",
    "cancel_requested",
)
OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class WorkflowSnapshot:
    """A workflow document as read, with the update time a conditional write names."""

    workflow_id: str
    doc: dict[str, Any]
    version: Any

    def get(self, name: str, default: Any = None) -> Any:
        return self.doc.get(name, default)

    @property
    def tenant_id(self) -> str:
        return str(self.doc.get("tenant_id"))

    @property
    def nodes(self) -> dict[str, str]:
        """Node name -> task id."""
        return dict(self.doc.get("nodes") or {})

    @property
    def order(self) -> list[str]:
        """Node names, every dependency before its dependents."""
        return list(self.doc.get("order") or self.nodes)


@dataclass(frozen=True)
class Write:
    """One write of a workflow's creation: a node's task (`create`) or an index entry (`set`)."""

    path: tuple[str, ...]  # collection, document, collection, document, ...
    data: dict[str, Any]
    create: bool
    task_type: str | None = None  # for a node's task: counted as submitted


class HoldRaced(Exception):
    """The first commit's budget hold lost its shard to another writer: plan it again."""


@dataclass(frozen=True)
class Begun:
    """The first commit of a creation: this request's, or an earlier one's (a replay)."""

    workflow_id: str
    replayed: bool
    version: Any = None  # the workflow document's, after this request created it


class WorkflowStore:
    def __init__(self, repository: FirestoreTaskRepository) -> None:
        self._repository = repository
        self._db = repository._db  # the tasks database: nodes and workflows live side by side
        self._workflows = self._db.collection(queries.WORKFLOWS)

    def _after(self, version: Any) -> Any:
        return self._db.write_option(last_update_time=version)

    def _ref(self, path: tuple[str, ...]) -> Any:
        return self._db.document(*path)

    # -- creating ------------------------------------------------------------

    def begin(  # noqa: PLR0912 - one answer per way the first commit can end
        self,
        workflow_id: str,
        doc: dict[str, Any],
        claim: IdempotencyClaim | None,
        writes: Sequence[Write],
        hold: Staged | None = None,
    ) -> Begun:
        """Create the workflow document (and the key's record) with the first writes, at once.

        Concurrent requests with one Idempotency-Key race on the record's
        `create`: one wins, the others answer its workflow. A key past its
        24 h window starts afresh, as a task's does.
        """
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition

        ref = self._workflows.document(workflow_id)
        idem = None
        record: dict[str, Any] = {}
        if claim is not None:
            idem = self._db.collection(queries.IDEMPOTENCY_KEYS).document(claim.doc_id)
            record = {
                "tenant_id": claim.tenant_id,
                "workflow_id": workflow_id,
                "body_digest": claim.body_digest,
                "created_at": doc["created_at"],
                queries.EXPIRES_AT: doc["created_at"] + IDEMPOTENCY_TTL,
            }
        renew_after: Any = None
        for _ in range(_MAX_CONFLICTS):
            batch = self._db.batch()
            batch.create(ref, doc)
            if idem is not None and renew_after is None:
                batch.create(idem, record)
            elif idem is not None:
                batch.update(idem, record, option=self._after(renew_after))
            self._add(batch, writes)
            if hold is not None:
                hold.stage(batch)
            try:
                results = batch.commit(**WORKER_CALL.kwargs())
            except (AlreadyExists, FailedPrecondition) as exc:
                mine = ref.get(**SUBMIT_WRITE.kwargs())
                if mine.exists:
                    # This request's own commit landed and its answer was lost.
                    self._count(writes)
                    return Begun(workflow_id, replayed=False, version=mine.update_time)
                if hold is not None and (idem is None or isinstance(exc, FailedPrecondition)):
                    raise HoldRaced(workflow_id) from exc
                if idem is None:
                    raise
            else:
                self._count(writes)
                return Begun(workflow_id, replayed=False, version=results[0].update_time)
            prior = idem.get(**SUBMIT_WRITE.kwargs())
            if not prior.exists and hold is not None:
                raise HoldRaced(workflow_id)  # no record in the way: the hold's shard was
            if not prior.exists:
                renew_after = None
                continue  # expired and deleted in between: create it afresh
            seen = prior.to_dict() or {}
            if seen[queries.EXPIRES_AT] > doc["created_at"]:
                if claim is not None and seen.get("body_digest") != claim.body_digest:
                    raise IdempotencyMismatch(
                        "this Idempotency-Key was used with a different request body",
                        field="Idempotency-Key",
                    )
                return Begun(str(seen["workflow_id"]), replayed=True)
            renew_after = prior.update_time  # past its window: this request renews it
        raise Unavailable("the Idempotency-Key is contended; retry shortly")

    def commit(self, writes: Sequence[Write]) -> None:
        """Commit `writes` in one batch; tasks that exist already are left as they are."""
        from google.api_core.exceptions import AlreadyExists

        batch = self._db.batch()
        self._add(batch, writes)
        try:
            batch.commit(**WORKER_CALL.kwargs())
        except AlreadyExists:
            # A retried creation: some nodes exist. The rest one by one; sets are idempotent.
            for write in writes:
                with contextlib.suppress(AlreadyExists):
                    if write.create:
                        self._ref(write.path).create(write.data, **WORKER_CALL.kwargs())
                    else:
                        self._ref(write.path).set(write.data, **WORKER_CALL.kwargs())
        self._count(writes)

    def _add(self, batch: Any, writes: Iterable[Write]) -> None:
        for write in writes:
            if write.create:
                batch.create(self._ref(write.path), write.data)
            else:
                batch.set(self._ref(write.path), write.data)

    def _count(self, writes: Iterable[Write]) -> None:
        counters = self._repository.counters
        for write in writes:
            if write.task_type is not None:
                counters.submitted(write.task_type)
        counters.maybe_flush()

    def flag_dispatch_pending(self, workflow_id: str, task_ids: Sequence[str]) -> None:
        """Tasks whose publish failed, for the sweep to publish soon; the workflow says so."""
        for start in range(0, len(task_ids), BATCH_WRITES):
            batch = self._db.batch()
            for task_id in task_ids[start : start + BATCH_WRITES]:
                batch.update(
                    self._db.collection(queries.TASKS).document(task_id), {"dispatch_pending": True}
                )
            if start == 0:
                batch.update(self._workflows.document(workflow_id), {"dispatch_deferred": True})
            batch.commit(**SUBMIT_WRITE.kwargs())

    # -- reading -------------------------------------------------------------

    def read(self, workflow_id: str, deadline: Deadline = STATUS_READ) -> WorkflowSnapshot | None:
        snap = self._workflows.document(workflow_id).get(**deadline.kwargs())
        if not snap.exists:
            return None
        return WorkflowSnapshot(workflow_id, snap.to_dict() or {}, snap.update_time)

    def node_docs(
        self, workflow: WorkflowSnapshot, deadline: Deadline = STATUS_READ
    ) -> dict[str, dict[str, Any] | None]:
        """Each node's plain fields (one batched read), None for a task that does not exist."""
        nodes = workflow.nodes
        by_id = {task_id: name for name, task_id in nodes.items()}
        refs = [self._db.collection(queries.TASKS).document(t) for t in nodes.values()]
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(nodes)
        if not refs:
            return found
        for snap in self._db.get_all(refs, field_paths=list(NODE_FIELDS), **deadline.kwargs()):
            doc = snap.to_dict() if snap.exists else None
            if doc is not None and doc.get("tenant_id") == workflow.tenant_id:
                found[by_id[snap.id]] = doc
        return found

    def outcomes(
        self, workflow: WorkflowSnapshot, deadline: Deadline = STATUS_READ
    ) -> dict[str, int]:
        """How many nodes succeeded, failed and were cancelled (count aggregations)."""
        counts: dict[str, int] = {}
        for status in OUTCOMES:
            query = self._repository._query(
                queries.COUNT_WORKFLOW_NODES_BY_STATUS,
                {
                    "workflow_id": workflow.workflow_id,
                    "status": status,
                    "tenant_id": workflow.tenant_id,
                },
            )
            result = query.count(alias="n").get(**deadline.kwargs())
            counts[status] = int(result[0][0].value) if result and result[0] else 0
        return counts

    def page(
        self, tenant_id: str, *, limit: int, page_token: str | None
    ) -> tuple[list[WorkflowSnapshot], str | None]:
        """A tenant's workflows, newest first."""
        query = self._repository._query(queries.LIST_WORKFLOWS, {"tenant_id": tenant_id})
        if page_token:
            created, last_id = decode_page_token(page_token)
            query = query.start_after(
                {"created_at": created, "__name__": self._workflows.document(last_id)}
            )
        snaps = list(query.limit(limit + 1).stream(**STATUS_READ.kwargs()))
        found = [WorkflowSnapshot(s.id, s.to_dict() or {}, s.update_time) for s in snaps[:limit]]
        token = None
        if len(snaps) > limit:
            last = snaps[limit - 1]
            token = encode_page_token(last.get("created_at"), last.id)
        return found, token

    def due(self, now: datetime, limit: int) -> list[WorkflowSnapshot]:
        """Workflows whose next check is due (the reconciler's), oldest first."""
        query = self._repository._query(queries.WORKFLOWS_TO_CHECK, {}, below=now)
        return [
            WorkflowSnapshot(s.id, s.to_dict() or {}, s.update_time)
            for s in query.limit(limit).stream(**SWEEP_CALL.kwargs())
        ]

    # -- changing ------------------------------------------------------------

    def update(
        self,
        workflow_id: str,
        changes: dict[str, Any],
        version: Any,
        deadline: Deadline = SUBMIT_WRITE,
    ) -> bool:
        """One write conditioned on `version`; False if the document moved on (or is gone)."""
        from google.api_core.exceptions import FailedPrecondition, NotFound

        try:
            self._workflows.document(workflow_id).update(
                changes, option=self._after(version), **deadline.kwargs()
            )
        except (FailedPrecondition, NotFound):
            return False
        return True


def holds_of(stored: Any) -> dict[str, TokenHold]:
    """The nodes' holds (node task id -> hold) as the workflow document keeps them."""
    if not isinstance(stored, Mapping):
        return {}
    shard = int(stored.get("shard") or 0)
    tokens = stored.get("tokens") or {}
    return {
        task_id: TokenHold(id=task_id, tokens=int(n), shard=shard) for task_id, n in tokens.items()
    }
