"""Built-in task types: echo, sleep and analytics.summary."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from shared.analytics.summary import summarize
from shared.deferred import DeferredModel
from shared.tasks.registry import TaskContext, task_type


class EchoPayload(DeferredModel):
    model_config = ConfigDict(extra="allow")


@task_type("echo", EchoPayload)
def echo(payload: EchoPayload, ctx: TaskContext) -> dict[str, Any]:
    return payload.model_dump()


class SleepPayload(DeferredModel):
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


class SummaryPayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    values: list[FiniteNumber] = Field(min_length=1, max_length=1_000_000)


@task_type("analytics.summary", SummaryPayload)
def analytics_summary(payload: SummaryPayload, ctx: TaskContext) -> dict[str, Any]:
    return summarize(payload.values)


@task_type("analytics.chunk", SummaryPayload)
def analytics_chunk(payload: SummaryPayload, ctx: TaskContext) -> dict[str, Any]:
    """One chunk of a data set too large for one payload: its mergeable partial summary."""
    from shared.analytics.partials import summarize_chunk

    return summarize_chunk(payload.values)


class MergePayload(DeferredModel):
    model_config = ConfigDict(extra="forbid")


@task_type("analytics.merge", MergePayload)
def analytics_merge(payload: MergePayload, ctx: TaskContext) -> dict[str, Any]:
    """The summary of every chunk this task depends on, as if computed over their concatenation.

    Submit the chunks as `analytics.chunk` tasks, then this with `depends_on` naming
    them: it starts once they all succeeded and merges their partials exactly.
    """
    from shared.analytics.partials import merge
    from shared.errors import NonRetryable

    deps = ctx.inputs.get("deps") or {}
    if not deps:
        raise NonRetryable("analytics.merge needs depends_on: the analytics.chunk tasks to merge")
    return merge([dep["result"] for dep in deps.values()])
