"""Task types only the integration tests use; the worker's child processes import this module."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.tasks.registry import BUILTIN_MODULES, TaskContext, task_type

MODULES = (*BUILTIN_MODULES, __name__)


class Size(BaseModel):
    n: int


@task_type("test.inflate", Size)
def inflate(payload: Size, ctx: TaskContext) -> str:
    return "y" * payload.n


@task_type("test.nested", Size)
def nested(payload: Size, ctx: TaskContext) -> Any:
    value: Any = []
    for _ in range(payload.n):
        value = [value]
    return value


class Card(BaseModel):
    card: str


@task_type("test.charge", Card)
def charge(payload: Card, ctx: TaskContext) -> None:
    raise ValueError(f"card {payload.card} declined")


class Empty(BaseModel):
    pass


@task_type("test.not-json", Empty)
def not_json(payload: Empty, ctx: TaskContext) -> object:
    return {"when": object()}


@task_type("test.deterministic", Empty, non_retryable=(ZeroDivisionError,))
def deterministic(payload: Empty, ctx: TaskContext) -> float:
    return 1 / 0


@task_type("test.crash", Empty)
def crash(payload: Empty, ctx: TaskContext) -> None:
    import os

    os._exit(3)


class Fan(BaseModel):
    n: int
    join: str = "all"
    then: bool = True
    fail: list[int] = []


@task_type("test.fan", Fan)
def fan(payload: Fan, ctx: TaskContext) -> Any:
    children = [
        ("fail", {"times": 5, "retryable": False}) if i in payload.fail else ("echo", {"i": i})
        for i in range(payload.n)
    ]
    then = ("test.sum", {"expected": payload.n}) if payload.then else None
    return ctx.fan_out(children, then=then, join=payload.join)


class Expected(BaseModel):
    expected: int


@task_type("test.sum", Expected)
def add_up(payload: Expected, ctx: TaskContext) -> dict[str, Any]:
    if "winner" in ctx.inputs:
        return {"winner": ctx.inputs["winner"]["result"]}
    if "deps" in ctx.inputs:
        return {"total": sum(d["result"]["i"] for d in ctx.inputs["deps"].values())}
    children = ctx.inputs["children"]
    return {
        "n": len(children),
        "expected": payload.expected,
        "total": sum(c["result"]["i"] for c in children if c["status"] == "succeeded"),
        "errors": [c["index"] for c in children if c["status"] != "succeeded"],
        "in_order": [c["index"] for c in children] == list(range(len(children))),
    }


class Metered(BaseModel):
    tokens: list[int]  # reported with ctx.charge by every attempt
    fail_attempts: int = 0  # the first n attempts fail (retryably) after reporting
    hold_s: float = 0.0  # how long each attempt runs (to overlap deliveries)


@task_type("test.metered", Metered, price=10)
def metered(payload: Metered, ctx: TaskContext) -> dict[str, int]:
    import time

    from shared.errors import RetryableError

    for tokens in payload.tokens:
        ctx.charge(tokens, reason="work")
    time.sleep(payload.hold_s)
    if ctx.attempt <= payload.fail_attempts:
        raise RetryableError(f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


@task_type("test.traceparent", Empty)
def traceparent(payload: Empty, ctx: TaskContext) -> str | None:
    return ctx.traceparent
