"""The task view as the client reads it: typed where known, tolerant of what newer servers add."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aia_client.errors import InvalidResponse


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

_KNOWN_FIELDS = frozenset(
    {
        "task_id",
        "type",
        "status",
        "attempts",
        "max_attempts",
        "created_at",
        "started_at",
        "finished_at",
        "result",
        "error",
        "progress",
        "parent_id",
        "workflow_id",
        "children",
        "trace_id",
        "blocked_by",
        "priority",
        "dispatch",
        "status_url",
    }
)


@dataclass(frozen=True)
class TaskError:
    """Why a task failed: a stable code and a human message."""

    code: str
    message: str


@dataclass(frozen=True)
class Progress:
    """What the handler last reported; `fraction` is 0..1 when it reports one."""

    fraction: float | None = None
    message: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Task:
    """One task as the service shows it.

    `status` is a plain string so a status this client does not know yet still reads;
    compare it with `TaskStatus` members. Fields the client does not know are in
    `extra`, and `raw` is the JSON exactly as received.
    """

    task_id: str
    status: str
    type: str | None = None
    attempts: int = 0
    max_attempts: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: TaskError | None = None
    progress: Progress | None = None
    parent_id: str | None = None
    workflow_id: str | None = None
    children: tuple[Any, ...] = ()
    trace_id: str | None = None
    blocked_by: tuple[str, ...] = ()
    priority: int | None = None
    dispatch: str | None = None
    status_url: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCEEDED

    @classmethod
    def from_json(cls, data: object) -> Task:
        """Read a task view; only `task_id` and `status` are required."""
        if not isinstance(data, Mapping):
            raise InvalidResponse(f"expected a task object, got {type(data).__name__}")
        task_id, status = data.get("task_id"), data.get("status")
        if not isinstance(task_id, str) or not isinstance(status, str):
            raise InvalidResponse(f"a task view needs task_id and status strings: {data!r:.300}")
        return cls(
            task_id=task_id,
            status=status,
            type=_str(data.get("type")),
            attempts=_int(data.get("attempts")) or 0,
            max_attempts=_int(data.get("max_attempts")),
            created_at=_datetime(data.get("created_at")),
            started_at=_datetime(data.get("started_at")),
            finished_at=_datetime(data.get("finished_at")),
            result=data.get("result"),
            error=_error(data.get("error")),
            progress=_progress(data.get("progress")),
            parent_id=_str(data.get("parent_id")),
            workflow_id=_str(data.get("workflow_id")),
            children=tuple(data["children"]) if isinstance(data.get("children"), list) else (),
            trace_id=_str(data.get("trace_id")),
            blocked_by=_strings(data.get("blocked_by")),
            priority=_int(data.get("priority")),
            dispatch=_str(data.get("dispatch")),
            status_url=_str(data.get("status_url")),
            extra={k: v for k, v in data.items() if k not in _KNOWN_FIELDS},
            raw=dict(data),
        )


@dataclass(frozen=True)
class SubmittedTask(Task):
    """What `submit()` returns: the task plus how the submission went."""

    # The key every attempt of this submission carried: reuse it to resubmit safely.
    idempotency_key: str | None = None
    # True when the service answered from an earlier submission with the same key.
    replayed: bool = False


@dataclass(frozen=True)
class RateLimit:
    """A sustained rate of submits per second, with a burst."""

    rate: float
    burst: int


@dataclass(frozen=True)
class Usage:
    """Your token budget (`GET /usage`; the figures are None without one) and your limits."""

    tenant_id: str
    budgeted: bool
    balance: int | None = None
    reserved: int | None = None  # held by tasks not yet finished
    spent_this_period: int | None = None
    period: str | None = None  # the UTC month, "YYYY-MM"
    monthly: int | None = None
    # By scope: "*" for all your submits, else a task type.
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    max_running: int | None = None  # your tasks running at once; None: no limit
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: object) -> Usage:
        if not isinstance(data, Mapping) or not isinstance(data.get("tenant_id"), str):
            raise InvalidResponse(f"expected a usage object, got {data!r:.300}")
        period = _mapping(data.get("period"))
        limits = _mapping(data.get("limits"))
        rates = _mapping(limits.get("rate"))
        rate_limits = {
            str(scope): RateLimit(
                rate=_float(spec.get("rate")) or 0.0, burst=_int(spec.get("burst")) or 0
            )
            for scope, spec in rates.items()
            if isinstance(spec, Mapping)
        }
        return cls(
            tenant_id=str(data["tenant_id"]),
            budgeted=data.get("budgeted") is True,
            balance=_int(data.get("balance")),
            reserved=_int(data.get("reserved")),
            spent_this_period=_int(period.get("spent")),
            period=_str(period.get("id")),
            monthly=_int(data.get("monthly")),
            rate_limits=rate_limits,
            max_running=_int(limits.get("max_running")),
            raw=dict(data),
        )


# A newer server may change a field's shape; reading it must degrade to None, not crash.


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v if isinstance(v, str) else str(v) for v in value)
    return ()


def _error(value: object) -> TaskError | None:
    if not isinstance(value, Mapping):
        return None
    return TaskError(code=str(value.get("code", "")), message=str(value.get("message", "")))


def _progress(value: object) -> Progress | None:
    if not isinstance(value, Mapping):
        return None
    metadata = value.get("metadata")
    return Progress(
        fraction=_float(value.get("fraction")),
        message=_str(value.get("message")),
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
        updated_at=_datetime(value.get("updated_at")),
    )
