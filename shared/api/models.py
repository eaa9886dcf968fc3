"""Bodies the functions answer that have no model of their own in `shared.tasks`.

They describe answers built elsewhere as plain dicts (the problem shape in
`shared.errors`, health in `shared.operations.health`, metrics JSON), so the
OpenAPI document can state them; the contract tests validate real answers
against the document, which is what keeps these in step with that code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field

from shared.deferred import DeferredModel
from shared.tasks.models import TASK_ID_PATTERN, TaskView


class FieldError(DeferredModel):
    field: str
    message: str


class Problem(DeferredModel):
    """RFC 7807 problem details, as `shared.errors.AIAError.problem()` writes them."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="https://aia.dev/problems/<code>: switch on this")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(default=None, description="The request path")
    field: str | None = Field(default=None, description="The one field at fault, when there is")
    errors: list[FieldError] | None = Field(
        default=None, description="Every invalid payload field (at most 20)"
    )
    limit: int | None = Field(default=None, description="The nesting limit that was exceeded")
    cycle: list[str] | None = Field(
        default=None, description="A workflow's nodes that depend on each other in a cycle"
    )


class TaskAccepted(DeferredModel):
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    status: Literal["queued", "scheduled"] = Field(
        description="`scheduled` when it waits for its `run_at`"
    )
    status_url: str
    run_at: datetime | None = Field(
        default=None,
        description="When the delayed task starts (UTC): present exactly when `status` is "
        "`scheduled`",
    )
    dispatch: Literal["deferred"] | None = Field(
        default=None,
        description="Present when the publish failed: the task is stored and the sweep "
        "publishes it shortly",
    )


class TaskReplayed(TaskView):
    status_url: str
    dispatch: Literal["deferred"] | None = None


class StatusCounts(DeferredModel):
    scheduled: int = Field(ge=0)
    queued: int = Field(ge=0)
    running: int = Field(ge=0)
    waiting: int = Field(ge=0)
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)
    cancelled: int = Field(ge=0)


class TaskCounts(DeferredModel):
    counts: StatusCounts


class HealthCheck(DeferredModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class Health(DeferredModel):
    status: Literal["ok", "degraded", "down"]
    version: str
    checks: dict[str, HealthCheck]


class DurationHistogram(DeferredModel):
    count: int
    sum: float
    buckets: dict[str, int] = Field(description="Cumulative counts by upper bound (`le`)")


class MetricsJson(DeferredModel):
    aia_tasks: dict[str, dict[str, int]] = Field(description="status -> type -> tasks")
    aia_tasks_submitted_total: dict[str, int] = Field(description="type -> tasks submitted")
    aia_task_duration_seconds: dict[str, DurationHistogram]
