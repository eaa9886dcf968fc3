"""Task types: a name, a pydantic payload model and a handler, registered by decorator.

A module declares types with `@task_type(...)`; `load_registry(modules)` imports
the modules and collects what they declare. The worker's child processes load
the same modules by name, so the parent validates with exactly the handlers
the children run.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.errors import ConfigurationError, ValidationFailed

P = TypeVar("P", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_MODULES: tuple[str, ...] = ("shared.tasks.builtin", "shared.tasks.diagnostic")
MAX_PROGRESS_MESSAGE = 500
_MARK = "__aia_task_type__"
# The event a handler's `ctx.charge` sends to the worker (see runner.AttemptOutcome.charged).
CHARGE_EVENT = "charge"
MAX_CHARGE_REASON = 200
DEFAULT_PRICE = 1


def _never() -> bool:
    return False


def _drop(event: tuple[Any, ...]) -> None:
    return None


@dataclass(frozen=True)
class TaskContext:
    """What a handler may know about, and tell of, the attempt it runs in."""

    task_id: str
    tenant_id: str
    attempt: int
    max_attempts: int
    deadline: float = float("inf")  # epoch seconds; the attempt is stopped soon after
    # What the task was given to start from: a continuation's children, by position.
    inputs: dict[str, Any] = field(default_factory=dict)
    # W3C traceparent of the attempt's span: a handler's own outbound calls (an LLM
    # API, say) or spans can join the task's trace with it.
    traceparent: str | None = None
    cancel_flag: Callable[[], bool] = field(default=_never, repr=False, compare=False)
    emit: Callable[[tuple[Any, ...]], None] = field(default=_drop, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the attempt should stop: its deadline passed or the task was cancelled."""
        return self.cancel_flag()

    @property
    def deadline_at(self) -> datetime:
        return datetime.fromtimestamp(self.deadline, UTC)

    def remaining_s(self) -> float:
        """Seconds left before the deadline (never negative)."""
        return max(0.0, self.deadline - time.time())

    def fan_out(self, children: Sequence[Any], *, then: Any = None, join: str = "all") -> Any:
        """Hand the work to child tasks: return what this gives, and the task waits for them.

        `children` are `(type, payload)` pairs (or dicts with `max_attempts` /
        `timeout_s`); `then` the continuation that runs once the join is met and
        reads the children's results from `ctx.inputs`; `join` is "all" (every
        child succeeded), "all_settled" (every child finished) or "any" (the
        first success; the others are cancelled).
        """
        from shared.workflows.fanout import fan_out

        return fan_out(children, then=then, join=join)

    def progress(self, fraction: float, message: str | None = None, **metadata: Any) -> None:
        """Report how far the attempt got (0-1); stored at most once a second, latest wins."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress fraction must be within 0-1, got {fraction!r}")
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[:MAX_PROGRESS_MESSAGE]
        self.emit(("progress", float(fraction), message, metadata))

    def charge(self, tokens: int, *, reason: str = "") -> None:
        """Report `tokens` used by this attempt (adds up; settled at most at the reserved price).

        A budgeted tenant pays, when the task ends, what its attempts reported,
        capped at the type's price that submit reserved; a type whose handler
        never reports pays that price for a task that ran.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"ctx.charge takes a whole number of tokens >= 0, got {tokens!r}")
        self.emit((CHARGE_EVENT, tokens, str(reason)[:MAX_CHARGE_REASON]))


Handler = Callable[[Any, TaskContext], Any]


@dataclass(frozen=True)
class TaskType:
    name: str
    payload_model: type[BaseModel]
    handler: Handler
    diagnostic: bool = False
    result_model: type[BaseModel] | None = None
    # Exceptions the handler raises for deterministic failures: not worth a retry.
    non_retryable: tuple[type[BaseException], ...] = ()
    # Tokens a budgeted tenant's submit reserves: the most one task of this type costs.
    price: int = DEFAULT_PRICE

    def __post_init__(self) -> None:
        if isinstance(self.price, bool) or not isinstance(self.price, int) or self.price < 0:
            raise ConfigurationError(f"task type {self.name!r}: price must be an int >= 0")

    def dump_result(self, result: Any) -> Any:
        """The handler's return value as plain JSON data, checked against `result_model`."""
        from shared.workflows.fanout import FanOut

        if isinstance(result, FanOut):
            return result.to_json()  # not a result: the worker starts the children
        if self.result_model is None:
            return result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        try:
            return self.result_model.model_validate(result).model_dump(mode="json")
        except ValidationError as exc:
            from shared.errors import ResultInvalid

            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("result", *first["loc"]))
            raise ResultInvalid(f"{where}: {first['msg']}") from None


def task_type(
    name: str,
    payload_model: type[P],
    *,
    result_model: type[BaseModel] | None = None,
    diagnostic: bool = False,
    non_retryable: tuple[type[BaseException], ...] = (),
    price: int = DEFAULT_PRICE,
) -> Callable[[F], F]:
    """Declare the decorated function as the handler of task type `name`."""

    def decorator(handler: F) -> F:
        setattr(
            handler,
            _MARK,
            TaskType(name, payload_model, handler, diagnostic, result_model, non_retryable, price),
        )
        return handler

    return decorator


class TaskRegistry:
    """Maps type names to their payload model and handler."""

    def __init__(self, modules: Sequence[str] = ()) -> None:
        self._types: dict[str, TaskType] = {}
        self.modules = tuple(modules)

    def add(self, declared: TaskType) -> None:
        if declared.name in self._types:
            raise ConfigurationError(f"task type {declared.name!r} is registered twice")
        self._types[declared.name] = declared

    def register(
        self,
        name: str,
        payload_model: type[P],
        *,
        diagnostic: bool = False,
        result_model: type[BaseModel] | None = None,
        non_retryable: tuple[type[BaseException], ...] = (),
        price: int = DEFAULT_PRICE,
    ) -> Callable[[Callable[[P, TaskContext], Any]], Callable[[P, TaskContext], Any]]:
        def decorator(handler: Callable[[P, TaskContext], Any]) -> Callable[[P, TaskContext], Any]:
            self.add(
                TaskType(
                    name, payload_model, handler, diagnostic, result_model, non_retryable, price
                )
            )
            return handler

        return decorator

    def names(self, *, include_diagnostic: bool = True) -> list[str]:
        return sorted(n for n, t in self._types.items() if include_diagnostic or not t.diagnostic)

    def knows(self, name: str) -> bool:
        return name in self._types

    def get(self, name: str, *, include_diagnostic: bool = True) -> TaskType:
        task = self._types.get(name)
        if task is None or (task.diagnostic and not include_diagnostic):
            known = ", ".join(self.names(include_diagnostic=include_diagnostic))
            raise ValidationFailed(
                f"unknown task type {name!r}; known types: {known}", field="type"
            )
        return task

    def parse_payload(self, task: TaskType, payload: dict[str, Any]) -> BaseModel:
        """Validate a payload against its type's model; errors name the field."""
        try:
            # Strict, from JSON: a bool is no number and "5" no integer, as the
            # OpenAPI document says; 5.0 is an integer there, as in JSON Schema.
            return task.payload_model.model_validate_json(
                json.dumps(integral_floats_as_ints(payload)), strict=True
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in ("payload", *first["loc"]))
            raise ValidationFailed(
                f"{path}: {first['msg']}",
                field=path,
                errors=[
                    {"field": ".".join(str(p) for p in ("payload", *e["loc"])), "message": e["msg"]}
                    for e in exc.errors()[:20]
                ],
            ) from exc


def integral_floats_as_ints(value: Any) -> Any:
    """JSON values with 5.0 read as 5, as JSON Schema counts it an integer."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_floats_as_ints(v) for v in value]
    return value


def load_registry(modules: Sequence[str]) -> TaskRegistry:
    """Import `modules` (a package: every module in it) and collect their `@task_type`s.

    A module that cannot be imported, or two types with one name, is a
    `ConfigurationError` naming it: functions load their registry at start-up,
    so a broken task module stops the deploy instead of failing requests.
    """
    names = _expand(modules)
    registry = TaskRegistry(names)
    for name in names:
        module = importlib.import_module(name)
        for value in vars(module).values():
            declared = getattr(value, _MARK, None)
            # Imported from elsewhere: that module registers it.
            if isinstance(declared, TaskType) and getattr(value, "__module__", name) == name:
                registry.add(declared)
    return registry


def _expand(modules: Sequence[str]) -> tuple[str, ...]:
    """Module names with each package replaced by itself and every module inside it."""
    names: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise ConfigurationError(
                f"task module {name!r} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        names.append(name)
        for found in pkgutil.walk_packages(getattr(module, "__path__", []), f"{name}."):
            try:
                importlib.import_module(found.name)
            except Exception as exc:
                raise ConfigurationError(
                    f"task module {found.name!r} cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
            names.append(found.name)
    return tuple(dict.fromkeys(names))


_builtin: TaskRegistry | None = None


def builtin_registry() -> TaskRegistry:
    """AIA's own task types (the built-in and the diagnostic ones), loaded once."""
    global _builtin  # noqa: PLW0603 - one registry per instance, built on first use
    if _builtin is None:
        _builtin = load_registry(BUILTIN_MODULES)
    return _builtin
