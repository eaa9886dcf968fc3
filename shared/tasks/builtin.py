"""Built-in task types: echo, sleep and analytics.summary."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.analytics.summary import summarize
from shared.tasks.registry import TaskContext, task_type


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


@task_type("echo", EchoPayload)
def echo(payload: EchoPayload, ctx: TaskContext) -> dict[str, Any]:
    return payload.model_dump()


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=30)


@task_type("sleep", SleepPayload)
def sleep(payload: SleepPayload, ctx: TaskContext) -> dict[str, Any]:
    # A well-behaved handler: it stops as soon as the attempt is told to.
    until = time.monotonic() + payload.seconds
    while (left := until - time.monotonic()) > 0:
        if ctx.cancelled:
            break
        time.sleep(min(left, 0.05))
    return {"slept": payload.seconds}


FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class SummaryPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[FiniteNumber] = Field(min_length=1, max_length=1_000_000)


@task_type("analytics.summary", SummaryPayload)
def analytics_summary(payload: SummaryPayload, ctx: TaskContext) -> dict[str, Any]:
    return summarize(payload.values)
