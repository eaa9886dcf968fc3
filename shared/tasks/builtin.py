"""Built-in task types: echo, sleep and analytics.summary."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

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


@task_type("analytics.summary", SummaryPayload)
def analytics_summary(payload: SummaryPayload, ctx: TaskContext) -> dict[str, Any]:
    return summarize(payload.values)
