"""Data models, named by direction of travel: request in, stored, view out, message on the bus."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TIMEOUT_S = 540  # Event-triggered Cloud Functions stop at 540 s.
TASK_ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4 hex: also a safe Firestore document id
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


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


class TaskRequest(BaseModel):
    """What a client submits."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout_s: int = Field(default=60, ge=1, le=MAX_TIMEOUT_S)


class TaskError(BaseModel):
    """Why an attempt failed: a stable code and a human message."""

    code: str
    message: str


class TokenHold(BaseModel):
    """Tokens a budgeted tenant's submit reserved for the task (see shared.flow)."""

    id: str  # the ledger key: the task id, then "<task_id>.r<n>" for its n-th replay
    tokens: int = Field(ge=0)
    shard: int = Field(ge=0)  # the escrow shard it came from; settled back into the same


class Task(BaseModel):
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
    # Budgeted tenants only: what submit reserved, and what attempts reported using.
    hold: TokenHold | None = None
    tokens_charged: int | None = None  # None: no attempt reported any use

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - (self.attempts - self.attempt_base)


class TaskView(BaseModel):
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
        )

    def to_json(self) -> dict[str, Any]:
        # The result goes in as the JSON it was stored as: pydantic's serialiser
        # stops at a nesting depth that stored data may legitimately reach.
        body = self.model_dump(mode="json", exclude={"result"})
        if self.status is TaskStatus.SUCCEEDED:
            body["result"] = self.result
        if self.status is not TaskStatus.FAILED:
            body.pop("error")
        return body


class TaskMessage(BaseModel):
    """What travels on the tasks topic: ids only, never task data."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    tenant_id: str = Field(min_length=1, max_length=64)


class TaskPage(BaseModel):
    tasks: list[TaskView]
    next_page_token: str | None = None


class ApiKeyRecord(BaseModel):
    """A stored API key: its hash and tenant, never the key itself."""

    key_id: str
    tenant_id: str
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
