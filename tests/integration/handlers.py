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
