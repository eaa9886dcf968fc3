"""Built-in task types: echo, sleep, analytics.summary and the diagnostic fail."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.analytics.summary import summarize
from shared.errors import NonRetryable, RetryableError
from shared.tasks.registry import TaskContext, TaskRegistry

registry = TaskRegistry()


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="allow")


@registry.register("echo", EchoPayload)
def echo(payload: EchoPayload, ctx: TaskContext) -> dict[str, Any]:
    return payload.model_dump()


class SleepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=30)


@registry.register("sleep", SleepPayload)
def sleep(payload: SleepPayload, ctx: TaskContext) -> dict[str, Any]:
    time.sleep(payload.seconds)
    return {"slept": payload.seconds}


FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class SummaryPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    values: list[FiniteNumber] = Field(min_length=1, max_length=1_000_000)


@registry.register("analytics.summary", SummaryPayload)
def analytics_summary(payload: SummaryPayload, ctx: TaskContext) -> dict[str, Any]:
    return summarize(payload.values)


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    times: int = Field(default=1, ge=0, le=100)
    retryable: bool = True


@registry.register("fail", FailPayload, diagnostic=True)
def fail(payload: FailPayload, ctx: TaskContext) -> dict[str, Any]:
    """Fails the first `times` attempts, then succeeds: proves retries and dead-lettering."""
    if ctx.attempt <= payload.times:
        message = f"diagnostic failure on attempt {ctx.attempt} of {payload.times}"
        if payload.retryable:
            raise RetryableError(message)
        raise NonRetryable(message)
    return {"succeeded_on_attempt": ctx.attempt}
