"""Data models, named by direction of travel: request in, stored, view out, message on the bus."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import (
    AwareDatetime,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared import tracing
from shared.deferred import DeferredModel

MAX_TIMEOUT_S = 540  # Event-triggered Cloud Functions stop at 540 s.
MAX_DEPENDENCIES = 1000
TASK_ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4 hex: also a safe Firestore document id
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
MAX_DELAY_S = 365 * 24 * 3600  # how far ahead a task may be scheduled
# RFC 3339's date-time (JSON Schema's format): the values themselves are pydantic's to check.
_AWARE: TypeAdapter[AwareDatetime] = TypeAdapter(AwareDatetime)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class TaskStatus(StrEnum):
    SCHEDULED = "scheduled"  # waits for its run_at (a delay or a cron slot)
    QUEUED = "queued"  # ready: dispatched, or waiting for a worker
    RUNNING = "running"  # an attempt holds the lease
    WAITING = "waiting"  # handed its work to children; no worker held while they run
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self.value in TERMINAL


CONCURRENCY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
MAX_RUNNING = 100
MIN_PRIORITY, MAX_PRIORITY = 0, 9


class TaskRequest(DeferredModel):
    """What a client submits."""

    # At most one start time: both given is a 422 (shared.tasks.submission.start_of).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["run_at", "delay_s"],
                "properties": {"run_at": {"type": "string"}, "delay_s": {"type": "number"}},
            },
            # max_running (a number) needs a concurrency_key (a string): TaskRequest's rule.
            "if": {"required": ["max_running"], "properties": {"max_running": {"type": "integer"}}},
            "then": {
                "required": ["concurrency_key"],
                "properties": {"concurrency_key": {"type": "string"}},
            },
        },
    )

    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout_s: int = Field(default=60, ge=1, le=MAX_TIMEOUT_S)
    # Tasks (of the same tenant) that must succeed first; their results are ctx.inputs["deps"].
    depends_on: list[str] = Field(default_factory=list, max_length=MAX_DEPENDENCIES)
    # When to start (one of the two; neither means now). See shared.tasks.submission.
    run_at: AwareDatetime | None = Field(
        default=None,
        description="Start at this time (RFC 3339 with an offset), at most 365 days ahead: "
        "the task waits `scheduled` until then. A time past, or within a second, starts now. "
        "Not with `delay_s`",
    )
    delay_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY_S,
        description="Start this many seconds from now (at most 365 days): the task waits "
        "`scheduled` until then; under a second starts now. Not with `run_at`",
    )

    @field_validator("run_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: object) -> object:
        # pydantic would also take a number (or a string of digits) as Unix time, and a
        # space for the T: the contract says RFC 3339.
        if value is None:
            return None
        if not (isinstance(value, str) and _RFC3339.fullmatch(value)):
            raise ValueError("must be an RFC 3339 date-time string with an offset")
        # Parsed here: past a before-validator, strict validation refuses any string.
        try:
            return _AWARE.validate_python(value, strict=False)
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from None

    # This task's own completion webhook (shared.webhooks): checked at submit, stored sealed.
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)
    # At most `max_running` of the tenant's tasks with this key run at once.
    concurrency_key: str | None = Field(
        default=None,
        pattern=CONCURRENCY_KEY_PATTERN,
        description="Tasks of this tenant sharing a key run at most `max_running` at once; "
        "one over the limit waits `queued` with `blocked_by: concurrency:<key>`",
    )
    max_running: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RUNNING,
        description="The key's limit (default 1); only with `concurrency_key`",
    )
    priority: int | None = Field(
        default=None,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="0-9, default 5, higher first: among the tenant's tasks waiting for a "
        "concurrency slot, each step is a minute's head start in line",
    )

    @model_validator(mode="after")
    def _limit_needs_a_key(self) -> TaskRequest:
        if self.max_running is not None and self.concurrency_key is None:
            raise ValueError("max_running needs a concurrency_key")
        return self


class TaskError(DeferredModel):
    """Why an attempt failed: a stable code and a human message."""

    code: str
    message: str


class TokenHold(DeferredModel):
    """Tokens a budgeted tenant's submit reserved for the task (see shared.flow)."""

    id: str  # the ledger key: the task id, then "<task_id>.r<n>" for its n-th replay
    tokens: int = Field(ge=0)
    shard: int = Field(ge=0)  # the escrow shard it came from; settled back into the same


class Task(DeferredModel):
    """A task as the service knows it (plaintext; storage encrypts data fields)."""

    task_id: str
    tenant_id: str
    type: str
    status: TaskStatus
    payload: dict[str, Any] | None = None  # None when not decrypted for this read
    attempts: int = 0
    max_attempts: int
    timeout_s: int
    # Attempts made before the last replay: each replay grants max_attempts afresh.
    attempt_base: int = 0
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: TaskError | None = None
    lease_id: str | None = None
    lease_until: datetime | None = None
    dispatch_pending: bool = False
    dead_letter_pending: bool = False
    run_at: datetime | None = None  # set while, and after, it waited as `scheduled`
    progress: dict[str, Any] | None = None  # None when absent or not decrypted for this read
    cancel_requested: bool = False
    # Orchestration (shared/workflows): a child knows its parent and position; a parent
    # its join and continuation; a continuation waits on its parent's join.
    parent_id: str | None = None
    child_index: int | None = None
    continues: str | None = None  # a continuation: the parent whose join it completes
    join: dict[str, Any] | None = None  # {"mode", "total", "buckets"} on a parent
    continuation_id: str | None = None
    blocked_by: str | None = None  # why a waiting task waits, e.g. "join:<parent id>"
    inputs_from: str | None = None  # "children:<parent id>", "task:<task id>" or "deps"
    depends_on: list[str] | None = None  # tasks that must succeed before this one starts
    has_dependents: bool = False  # some waiting task depends on this one
    result_from: str | None = None  # a parent's result is its continuation's
    workflow_id: str | None = None  # a node of this workflow (shared/workflows)
    node: str | None = None  # ... under this name
    webhook_url: str | None = None  # None when not decrypted for this read
    notify: bool = False  # plain: the task has a webhook_url, known without decrypting
    # Budgeted tenants only: what submit reserved, and what attempts reported using.
    hold: TokenHold | None = None
    tokens_charged: int | None = None  # None: no attempt reported any use
    # W3C traceparent of the span the task was created in (shared.tracing).
    traceparent: str | None = None
    # A concurrency limit (shared.flow.concurrency): at most max_running with this key run.
    concurrency_key: str | None = None
    max_running: int | None = None
    priority: int | None = None  # None: the default (shared.flow.concurrency.DEFAULT_PRIORITY)
    handed_slot: str | None = None  # a slot a release keeps for this waiting task

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - (self.attempts - self.attempt_base)


class Progress(DeferredModel):
    """The latest progress a handler reported (`ctx.progress`)."""

    fraction: float = Field(ge=0, le=1)
    message: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    updated_at: datetime


class TaskView(DeferredModel):
    """What a client reads back."""

    task_id: str
    type: str
    status: TaskStatus
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any = None
    error: TaskError | None = None
    run_at: datetime | None = Field(
        default=None,
        description="When a delayed task was due to start; present only for a delayed task",
    )
    progress: Progress | None = None
    cancel_requested: bool = False
    parent_id: str | None = None
    continuation_id: str | None = None
    blocked_by: str | None = None
    children: dict[str, int] | None = None  # a parent's children by status
    workflow_id: str | None = None  # the workflow this task is a node of
    priority: int | None = Field(default=None, description="The priority given at submit")
    trace_id: str | None = Field(
        default=None,
        description="The OpenTelemetry trace the task was submitted in (W3C trace id)",
    )

    @classmethod
    def of(cls, task: Task) -> TaskView:
        return cls(
            task_id=task.task_id,
            type=task.type,
            status=task.status,
            attempts=task.attempts,
            max_attempts=task.max_attempts,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            result=task.result if task.status is TaskStatus.SUCCEEDED else None,
            error=task.error if task.status is TaskStatus.FAILED else None,
            run_at=task.run_at,
            progress=Progress.model_validate(task.progress) if task.progress else None,
            cancel_requested=task.cancel_requested,
            parent_id=task.parent_id or task.continues,
            continuation_id=task.continuation_id,
            blocked_by=task.blocked_by
            if task.status in (TaskStatus.WAITING, TaskStatus.QUEUED)
            else None,
            workflow_id=task.workflow_id,
            priority=task.priority,
            trace_id=tracing.trace_id_of(task.traceparent),
        )

    def to_json(self) -> dict[str, Any]:
        # The result goes in as the JSON it was stored as: pydantic's serialiser
        # stops at a nesting depth that stored data may legitimately reach.
        body = self.model_dump(mode="json", exclude={"result"})
        if self.status is TaskStatus.SUCCEEDED:
            body["result"] = self.result
        if self.status is not TaskStatus.FAILED:
            body.pop("error")
        if self.run_at is None:
            body.pop("run_at")
        if self.progress is None:
            body.pop("progress")
        if not self.cancel_requested:
            body.pop("cancel_requested")
        for optional in (
            "parent_id",
            "continuation_id",
            "blocked_by",
            "children",
            "workflow_id",
            "priority",
            "trace_id",
        ):
            if body.get(optional) is None:
                body.pop(optional, None)
        return body


class CreatedTask(DeferredModel):
    """A fresh task's document as it was created, carried so its first delivery needs no read.

    The data fields travel exactly as stored: sealed (ciphertext bound to tenant,
    task and control fields), so the message reveals no more than the document.
    `version` is the creation's update time; the worker's first conditional
    write names it, so it only succeeds if the document is still this one.
    """

    model_config = ConfigDict(extra="ignore")

    version: str  # RFC 3339 with nanoseconds
    type: str = Field(min_length=1, max_length=100)
    max_attempts: int = Field(ge=1)
    timeout_s: int = Field(ge=1)
    created_at: datetime
    data_key: str  # base64 of the wrapped data key
    payload: str  # base64 of the sealed payload
    notify: bool = False  # it has a webhook_url: its outcome stages a per-task webhook
    # A budgeted tenant's reservation: the terminal commit settles it, so it travels too.
    hold: TokenHold | None = None
    priority: int | None = None  # its place in line, should a tenant limit make it wait


class TaskMessage(DeferredModel):
    """What travels on the tasks topic: ids, and for a fresh task its sealed document."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    tenant_id: str = Field(min_length=1, max_length=64)
    created: CreatedTask | None = None


class TaskPage(DeferredModel):
    tasks: list[TaskView]
    next_page_token: str | None = None


class ApiKeyRecord(DeferredModel):
    """A stored API key: its hash and tenant, never the key itself."""

    key_id: str
    tenant_id: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
