"""Built-in task types: echo, sleep, analytics.summary and the diagnostic fail."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

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


def _quantile(ordered: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (statistics "inclusive", numpy "linear").
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def _sample_stdev(values: list[float], mean: float) -> float:
    # Corrected two-pass: the second term cancels the rounding error of `mean`,
    # which matters when the spread is tiny next to the magnitude.
    deviations = [x - mean for x in values]
    squares = math.fsum(d * d for d in deviations)
    drift = math.fsum(deviations)
    return math.sqrt(max(squares - drift * drift / len(values), 0.0) / (len(values) - 1))


def summarize(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    n = len(ordered)
    mean = math.fsum(ordered) / n
    stdev = _sample_stdev(ordered, mean) if n > 1 else None
    return {
        "count": n,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "stdev": stdev,
        "p50": _quantile(ordered, 0.5),
        "p90": _quantile(ordered, 0.9),
        "p99": _quantile(ordered, 0.99),
    }


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
