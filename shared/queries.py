"""Firestore collection names and every query shape the code runs.

Repositories build queries only from these specs, so the Terraform test can
check that each one has its composite index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TASKS = "tasks"
IDEMPOTENCY_KEYS = "idempotency_keys"
API_KEYS = "api_keys"
METRIC_SHARDS = "metric_shards"
WORKFLOWS = "workflows"

# Field holding each document's expiry; Terraform sets a TTL policy on it.
EXPIRES_AT = "expires_at"
TTL_COLLECTIONS = (TASKS, IDEMPOTENCY_KEYS, WORKFLOWS)

Direction = Literal["ASCENDING", "DESCENDING"]


@dataclass(frozen=True)
class QuerySpec:
    """Equality filters, then range/order fields, on one collection."""

    collection: str
    equals: tuple[str, ...]
    order: tuple[tuple[str, Direction], ...] = ()
    range_field: str | None = None

    def needs_composite_index(self) -> bool:
        # Equality-only queries are served by merging single-field indexes.
        fields = set(self.equals) | {name for name, _ in self.order}
        return bool(self.order) and len(fields) > 1


_NEWEST_FIRST: tuple[tuple[str, Direction], ...] = (
    ("created_at", "DESCENDING"),
    ("__name__", "DESCENDING"),
)

LIST_TASKS = QuerySpec(TASKS, ("tenant_id",), _NEWEST_FIRST)
LIST_TASKS_BY_STATUS = QuerySpec(TASKS, ("tenant_id", "status"), _NEWEST_FIRST)
LIST_TASKS_BY_TYPE = QuerySpec(TASKS, ("tenant_id", "type"), _NEWEST_FIRST)
LIST_TASKS_BY_STATUS_TYPE = QuerySpec(TASKS, ("tenant_id", "status", "type"), _NEWEST_FIRST)
COUNT_TASKS_BY_STATUS_TYPE = QuerySpec(TASKS, ("status", "type"))
COUNT_TENANT_TASKS_BY_STATUS = QuerySpec(TASKS, ("tenant_id", "status"))
# Tasks waiting longer than they should: publish failed, message lost, or worker died.
STALE_QUEUED = QuerySpec(
    TASKS, ("status",), (("updated_at", "ASCENDING"),), range_field="updated_at"
)
DISPATCH_PENDING = QuerySpec(TASKS, ("status", "dispatch_pending"))
EXPIRED_LEASES = QuerySpec(
    TASKS, ("status",), (("lease_until", "ASCENDING"),), range_field="lease_until"
)
# Failed for good, but the worker's own dead-letter publish did not get through.
DEAD_LETTER_PENDING = QuerySpec(
    TASKS, ("dead_letter_pending",), (("updated_at", "ASCENDING"),), range_field="updated_at"
)
# A parent's children in fan-out order, and counted by status for its view.
CHILDREN = QuerySpec(TASKS, ("parent_id",), (("child_index", "ASCENDING"),))
COUNT_CHILDREN_BY_STATUS = QuerySpec(TASKS, ("parent_id", "status", "tenant_id"))
# What the reconciler looks at: parents and continuations waiting for a join.
STALE_WAITING = QuerySpec(
    TASKS, ("status",), (("updated_at", "ASCENDING"),), range_field="updated_at"
)
# Per-child join records and completed buckets, under joins/{parent id}.
JOINS = "joins"
JOIN_DONE = "done"
JOIN_BUCKETS = "buckets"
# dependents/{task}/of/{dependent}: who waits for a task (its `depends_on` names it).
DEPENDENTS = "dependents"
KEYS_TO_REWRAP = QuerySpec(TASKS, (), (("__name__", "ASCENDING"),))
# Workflows (shared/workflows): a tenant's newest first; each one's nodes counted by
# status; and those whose next reconciler check is due.
LIST_WORKFLOWS = QuerySpec(WORKFLOWS, ("tenant_id",), _NEWEST_FIRST)
COUNT_WORKFLOW_NODES_BY_STATUS = QuerySpec(TASKS, ("workflow_id", "status", "tenant_id"))
WORKFLOWS_TO_CHECK = QuerySpec(WORKFLOWS, (), (("check_at", "ASCENDING"),), range_field="check_at")

ALL_QUERIES: tuple[QuerySpec, ...] = (
    LIST_TASKS,
    LIST_TASKS_BY_STATUS,
    LIST_TASKS_BY_TYPE,
    LIST_TASKS_BY_STATUS_TYPE,
    COUNT_TASKS_BY_STATUS_TYPE,
    COUNT_TENANT_TASKS_BY_STATUS,
    STALE_QUEUED,
    DISPATCH_PENDING,
    EXPIRED_LEASES,
    DEAD_LETTER_PENDING,
    CHILDREN,
    COUNT_CHILDREN_BY_STATUS,
    STALE_WAITING,
    KEYS_TO_REWRAP,
    LIST_WORKFLOWS,
    COUNT_WORKFLOW_NODES_BY_STATUS,
    WORKFLOWS_TO_CHECK,
)


def list_tasks_spec(*, status: bool, type_: bool) -> QuerySpec:
    if status and type_:
        return LIST_TASKS_BY_STATUS_TYPE
    if status:
        return LIST_TASKS_BY_STATUS
    if type_:
        return LIST_TASKS_BY_TYPE
    return LIST_TASKS
