"""Firestore collection names and every query shape the code runs.

Repositories build queries only from these specs, so the Terraform test can
check that each one has its composite index.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

TASKS = "tasks"
IDEMPOTENCY_KEYS = "idempotency_keys"
API_KEYS = "api_keys"
METRIC_SHARDS = "metric_shards"
WORKFLOWS = "workflows"
SCHEDULES = "schedules"
WEBHOOK_ENDPOINTS = "webhook_endpoints"
WEBHOOK_EVENTS = "webhook_events"
WEBHOOK_DELIVERIES = "webhook_deliveries"

# Flow control (shared.flow): per-tenant configuration, the escrow shards of budgets,
# usage per period, the ledger, and rate-limit slot shards.
FLOW_CONFIG = "flow_config"
BUDGET_SHARDS = "budget_shards"
BUDGET_USAGE = "budget_usage"
LEDGER = "ledger"
RATE_SHARDS = "rate_shards"
CONCURRENCY_SLOTS = "concurrency_slots"

# Field holding each document's expiry; Terraform sets a TTL policy on it.
EXPIRES_AT = "expires_at"
TTL_COLLECTIONS = (
    TASKS,
    IDEMPOTENCY_KEYS,
    WEBHOOK_EVENTS,
    WEBHOOK_DELIVERIES,
    LEDGER,
    RATE_SHARDS,
    WORKFLOWS,
    CONCURRENCY_SLOTS,
)
# (collection, field) never filtered or ordered on: Terraform exempts them from indexing.
# A workflow's node map and order hold up to 1,000 entries each: indexed, every
# entry would be an index write at creation.
UNINDEXED_FIELDS = (
    (WEBHOOK_ENDPOINTS, "secrets"),
    (WEBHOOK_DELIVERIES, "attempts"),
    (WORKFLOWS, "nodes"),
    (WORKFLOWS, "order"),
    (WORKFLOWS, "holds"),
)

Direction = Literal["ASCENDING", "DESCENDING"]


@dataclass(frozen=True)
class QuerySpec:
    """Equality filters (`==`, or `in` on all shards), then range/order fields, on a collection."""

    collection: str
    equals: tuple[str, ...]
    order: tuple[tuple[str, Direction], ...] = ()
    range_field: str | None = None

    @property
    def sharded(self) -> bool:
        """Led by the index shard, which the query reads whole with `in`."""
        return bool(self.equals) and self.equals[0] == INDEX_SHARD

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
# Queued tasks waiting for a concurrency slot, by what they wait for (a `blocked_by`
# range): counted by the metrics scrape.
COUNT_WAITING_FOR_SLOTS = QuerySpec(
    TASKS, ("status",), (("blocked_by", "ASCENDING"),), range_field="blocked_by"
)
# Index shards. A due time (`run_at`, `due_at`) or a sweep's timestamp is a nearly
# monotonic indexed value, which Firestore serves at about 500 writes/s per index
# key range; every task and schedule carries `index_shard` = crc32(id) % INDEX_SHARDS,
# the shard leads each such index, so its entries spread over INDEX_SHARDS ranges,
# and the ticker and the sweeps read every shard at once with `in` (at most 30
# values). 24 ranges take 10,000 tasks/s at ~420 entries/s each.
INDEX_SHARD = "index_shard"
INDEX_SHARDS = 24
# Tasks waiting longer than they should: publish failed, message lost, or worker died.
# A sweep's timestamp rises with time and its status has a handful of values, so
# each (status, time) range would take one entry per task: about 500 tasks/s for
# the service. The index shard leads these indexes.
STALE_QUEUED = QuerySpec(
    TASKS, (INDEX_SHARD, "status"), (("updated_at", "ASCENDING"),), range_field="updated_at"
)
DISPATCH_PENDING = QuerySpec(TASKS, ("status", "dispatch_pending"))
EXPIRED_LEASES = QuerySpec(
    TASKS, (INDEX_SHARD, "status"), (("lease_until", "ASCENDING"),), range_field="lease_until"
)
# Failed for good, but the worker's own dead-letter publish did not get through.
DEAD_LETTER_PENDING = QuerySpec(
    TASKS,
    (INDEX_SHARD, "dead_letter_pending"),
    (("updated_at", "ASCENDING"),),
    range_field="updated_at",
)
# A parent's children in fan-out order, and counted by status for its view.
CHILDREN = QuerySpec(TASKS, ("parent_id",), (("child_index", "ASCENDING"),))
COUNT_CHILDREN_BY_STATUS = QuerySpec(TASKS, ("parent_id", "status", "tenant_id"))
# Per-child join records and completed buckets, under joins/{parent id}.
JOINS = "joins"
JOIN_DONE = "done"
JOIN_BUCKETS = "buckets"
# dependents/{task}/of/{dependent}: who waits for a task (its `depends_on` names it).
DEPENDENTS = "dependents"
KEYS_TO_REWRAP = QuerySpec(TASKS, (), (("__name__", "ASCENDING"),))
# A tenant's ledger, newest first, all entries or of one kind.
LEDGER_BY_TENANT = QuerySpec(
    LEDGER, ("tenant_id",), (("at", "DESCENDING"), ("__name__", "DESCENDING"))
)
LEDGER_BY_TENANT_KIND = QuerySpec(
    LEDGER, ("tenant_id", "kind"), (("at", "DESCENDING"), ("__name__", "DESCENDING"))
)
# A slot group's waiting tasks, first in line (`ready_at`) first: a release wakes them
# (shared.flow.concurrency).
TASKS_BLOCKED = QuerySpec(
    TASKS, ("tenant_id", "blocked_by", "status"), (("ready_at", "ASCENDING"),)
)
# Every escrow shard of a tenant; its usage shards of one period (equality only).
BUDGET_SHARDS_OF_TENANT = QuerySpec(BUDGET_SHARDS, ("tenant_id",))
USAGE_OF_PERIOD = QuerySpec(BUDGET_USAGE, ("tenant_id", "period"))
# Workflows (shared/workflows): a tenant's newest first; each one's nodes counted by
# status; and those whose next reconciler check is due.
LIST_WORKFLOWS = QuerySpec(WORKFLOWS, ("tenant_id",), _NEWEST_FIRST)
COUNT_WORKFLOW_NODES_BY_STATUS = QuerySpec(TASKS, ("workflow_id", "status", "tenant_id"))
WORKFLOWS_TO_CHECK = QuerySpec(WORKFLOWS, (), (("check_at", "ASCENDING"),), range_field="check_at")
# Timers: delayed tasks (`run_at`) and cron schedules (`due_at`), behind the index shard.
DUE_TASKS = QuerySpec(
    TASKS, (INDEX_SHARD, "status"), (("run_at", "ASCENDING"),), range_field="run_at"
)
DUE_SCHEDULES = QuerySpec(
    SCHEDULES, (INDEX_SHARD, "state"), (("due_at", "ASCENDING"),), range_field="due_at"
)
LIST_SCHEDULES = QuerySpec(SCHEDULES, ("tenant_id",), _NEWEST_FIRST)
# Due times are only ever queried through the sharded indexes above: their
# automatic single-field indexes would be the unsharded hot range, so
# Terraform exempts them.
TIMER_FIELDS: tuple[tuple[str, str], ...] = ((TASKS, "run_at"), (SCHEDULES, "due_at"))
# A task's timestamps rise with time too, and every task query that filters or
# orders on one names an equality first (a composite index): their automatic
# single-field indexes serve no query and would each be a ~500 writes/s hot
# range across all tenants, so Terraform exempts them as well.
TASK_TIMESTAMPS = ("created_at", "updated_at", "started_at", "finished_at", "lease_until")
NOT_INDEXED: tuple[tuple[str, str], ...] = (
    *TIMER_FIELDS,
    *((TASKS, name) for name in TASK_TIMESTAMPS),
)
# Webhooks. A tenant's endpoints (the outbox's cached lookup, the fan-out) and
# the sweeps' due records are single-field queries; due fields are cleared
# (None) once handled, and a range filter never matches a None.
TENANT_ENDPOINTS = QuerySpec(WEBHOOK_ENDPOINTS, ("tenant_id",))
LIST_ENDPOINTS = QuerySpec(WEBHOOK_ENDPOINTS, ("tenant_id",), _NEWEST_FIRST)
LIST_DELIVERIES = QuerySpec(WEBHOOK_DELIVERIES, ("tenant_id", "endpoint_id"), _NEWEST_FIRST)
DUE_DELIVERIES = QuerySpec(
    WEBHOOK_DELIVERIES, (), (("next_attempt_at", "ASCENDING"),), range_field="next_attempt_at"
)
EVENTS_NOT_FANNED_OUT = QuerySpec(
    WEBHOOK_EVENTS, (), (("fanout_due_at", "ASCENDING"),), range_field="fanout_due_at"
)
ENDPOINTS_TO_CATCH_UP = QuerySpec(
    WEBHOOK_ENDPOINTS, (), (("catchup_due_at", "ASCENDING"),), range_field="catchup_due_at"
)
ENDPOINTS_IN_ID_ORDER = QuerySpec(WEBHOOK_ENDPOINTS, (), (("__name__", "ASCENDING"),))
# A new endpoint's catch-up: the tenant's tasks that finished while caches could be stale.
TASKS_FINISHED_BETWEEN = QuerySpec(
    TASKS,
    ("tenant_id",),
    (("finished_at", "ASCENDING"), ("__name__", "ASCENDING")),
    range_field="finished_at",
)

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
    KEYS_TO_REWRAP,
    LIST_WORKFLOWS,
    COUNT_WORKFLOW_NODES_BY_STATUS,
    WORKFLOWS_TO_CHECK,
    DUE_TASKS,
    DUE_SCHEDULES,
    LIST_SCHEDULES,
    TENANT_ENDPOINTS,
    LIST_ENDPOINTS,
    LIST_DELIVERIES,
    DUE_DELIVERIES,
    EVENTS_NOT_FANNED_OUT,
    ENDPOINTS_TO_CATCH_UP,
    ENDPOINTS_IN_ID_ORDER,
    TASKS_FINISHED_BETWEEN,
    LEDGER_BY_TENANT,
    LEDGER_BY_TENANT_KIND,
    BUDGET_SHARDS_OF_TENANT,
    USAGE_OF_PERIOD,
    TASKS_BLOCKED,
    COUNT_WAITING_FOR_SLOTS,
)


def index_shard(doc_id: str) -> int:
    """The index shard of a document, fixed by its id."""
    return zlib.crc32(doc_id.encode()) % INDEX_SHARDS


def all_shards() -> list[int]:
    """Every index shard: the `in` operand of a sharded query."""
    return list(range(INDEX_SHARDS))


def list_tasks_spec(*, status: bool, type_: bool) -> QuerySpec:
    if status and type_:
        return LIST_TASKS_BY_STATUS_TYPE
    if status:
        return LIST_TASKS_BY_STATUS
    if type_:
        return LIST_TASKS_BY_TYPE
    return LIST_TASKS
