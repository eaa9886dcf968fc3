"""The /schedules API's bodies: what a client posts, and the views it reads back.

`ScheduleRequest` is what the schedules function validates; the views
describe what `StoredSchedule.view()` writes, so the OpenAPI document can state
them (the contract tests hold real answers to the document).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from shared.deferred import DeferredModel
from shared.scheduling.policy import Overlap
from shared.tasks.models import MAX_TIMEOUT_S, TASK_ID_PATTERN

DEFAULT_CATCHUP_S = 3600
# Inside the 24 h of an Idempotency-Key: a slot retried within its window fires once.
MAX_CATCHUP_S = 23 * 3600
# Slots fire within a second or so locally and within a minute in production.
MIN_CATCHUP_S = 60


class ScheduledTask(DeferredModel):
    """The task each slot submits: a submit body without a start time (the slot is one)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1, max_length=100, description="A registered task type")
    payload: dict[str, Any] = Field(description="Valid for `type`, as a submit's payload")
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout_s: int = Field(default=60, ge=1, le=MAX_TIMEOUT_S)


class ScheduleRequest(DeferredModel):
    """What a client posts to /schedules; `task` is checked as a submit body would be."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(
        min_length=1,
        max_length=100,
        description="Five fields (minute hour day-of-month month day-of-week), as Debian's "
        "cron reads them, in `timezone`",
    )
    timezone: str = Field(
        min_length=1, max_length=64, description="An IANA time zone, such as `Europe/Paris`"
    )
    task: ScheduledTask
    overlap: Overlap = Field(
        default=Overlap.SKIP,
        description="A slot due while the previous slot's task is unfinished: `skip` it, "
        "`allow` it, or `buffer_one` (hold the latest until the task finishes)",
    )
    catchup_window_s: int = Field(
        default=DEFAULT_CATCHUP_S,
        ge=MIN_CATCHUP_S,
        le=MAX_CATCHUP_S,
        description="How late a slot may still fire; older ones count as missed",
    )


class ScheduledTaskView(DeferredModel):
    type: str
    max_attempts: int
    timeout_s: int


class LastRun(DeferredModel):
    slot: datetime = Field(description="The slot, in the schedule's time zone")
    task_id: str = Field(pattern=TASK_ID_PATTERN, description="The task it submitted")


class SlotError(DeferredModel):
    code: str = Field(description="The problem code submit answered")
    slot: datetime
    message: str


class ScheduleView(DeferredModel):
    """A schedule as the caller reads it: never the task's payload, which stays sealed."""

    schedule_id: str = Field(pattern=TASK_ID_PATTERN)
    cron: str
    timezone: str
    overlap: Overlap
    catchup_window_s: int
    state: Literal["active", "paused"]
    task: ScheduledTaskView
    next_runs: list[datetime] = Field(
        description="The next 5 slots, in the schedule's time zone (none while paused)"
    )
    created_at: datetime
    updated_at: datetime
    fired: int = Field(ge=0, description="Slots whose task was submitted")
    skipped: int = Field(ge=0, description="Slots skipped: overlap, or refused by submit")
    missed: int = Field(ge=0, description="Slots older than the catch-up window")
    last_run: LastRun | None = Field(default=None, description="Present once a slot fired")
    buffered_run: datetime | None = Field(
        default=None, description="A slot held by `buffer_one` until the previous task finishes"
    )
    last_error: SlotError | None = Field(
        default=None, description="Why the latest refused slot was skipped"
    )


class SchedulePage(DeferredModel):
    schedules: list[ScheduleView]
    next_page_token: str | None = Field(
        default=None, description="Present when there are more: pass it as `page_token`"
    )
